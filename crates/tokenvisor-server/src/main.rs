//! The `tokenvisor` binary: wires the configuration, the store, the supervisor and the
//! admin API together, and is the CLI of a running service. All behaviour lives in the
//! library crates.

mod client;
mod commands;
mod exit;
mod keys;
mod settings;
mod telemetry;
mod transport;

use clap::{CommandFactory, Parser, Subcommand};
use client::{AdminClient, ClientArgs};

/// tokenvisor keeps every tenant's OAuth 2.0 connections alive.
#[derive(Debug, Parser)]
#[command(name = "tokenvisor", version, about, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands. The server ones take the server settings; the admin CLI ones
/// (a group of subcommands each: add one with its `ClientArgs` and a `client::*Command`
/// enum) take only where the admin API is and its token.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Run the supervisor and the admin API until SIGINT or SIGTERM.
    Serve(settings::ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(settings::StorageArgs),
    /// Print a table of connections, reading the database directly. Read-only: it never
    /// migrates, creates or writes anything (run `migrate` or `serve` first).
    Status(settings::StorageArgs),
    /// Encryption keys: generate one, show which keys hold the stored values, rotate
    /// every stored secret to the primary key (reads the database directly, online).
    #[command(subcommand, after_help = exit::HELP)]
    Keys(keys::KeysCommand),
    /// Integrations of a running service (admin API).
    #[command(after_help = exit::HELP)]
    Integrations {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::IntegrationsCommand,
    },
    /// Connections of a running service (admin API).
    #[command(after_help = exit::HELP)]
    Connections {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::ConnectionsCommand,
    },
    /// Tenants of a running service: their connections (admin API).
    #[command(after_help = exit::HELP)]
    Tenants {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::TenantsCommand,
    },
    /// Access tokens of a running service (admin API).
    #[command(after_help = exit::HELP)]
    Token {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::TokenCommand,
    },
    /// Webhook endpoints and dead letters of a running service (admin API).
    #[command(after_help = exit::HELP)]
    Webhooks {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::WebhooksCommand,
    },
    /// API keys of a running service: scoped keys, shown once, revoked at once (admin API).
    #[command(after_help = exit::HELP)]
    ApiKeys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::ApiKeysCommand,
    },
    /// The audit trail of a running service: token reads and changes (admin API).
    #[command(after_help = exit::HELP)]
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: client::AuditCommand,
    },
    /// Start connecting (or re-authorizing) a tenant: prints the URL to send them to.
    #[command(after_help = exit::HELP)]
    Authorize {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: client::AuthorizeArgs,
    },
    /// Tail the event stream of a running service; reconnects and resumes (with
    /// `Last-Event-ID`) when the stream breaks.
    #[command(after_help = exit::HELP)]
    Events {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: client::EventsArgs,
    },
    /// Print a shell completion script (`tokenvisor completions bash > /etc/bash_completion.d/tokenvisor`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(exit::code_of(&error) as u8)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = args.resolve().map_err(|error| exit::Exit::Usage.with(error))?;
            let telemetry = telemetry::init();
            let result = commands::serve(&config, &telemetry).await;
            telemetry.shutdown();
            result
        }
        Command::Migrate(args) => {
            let storage = args.resolve().map_err(|error| exit::Exit::Usage.with(error))?;
            let telemetry = telemetry::init();
            let result = commands::migrate(&storage).await;
            telemetry.shutdown();
            result
        }
        Command::Status(args) => {
            let storage = args.resolve().map_err(|error| exit::Exit::Usage.with(error))?;
            let telemetry = telemetry::init();
            let result = commands::status(&storage).await;
            telemetry.shutdown();
            result
        }
        Command::Keys(command) => {
            let telemetry = telemetry::init();
            let result = keys::run(command).await;
            telemetry.shutdown();
            result
        }
        Command::Integrations { client, command } => AdminClient::new(&client)?.integrations(command).await,
        Command::Connections { client, command } => AdminClient::new(&client)?.connections(command).await,
        Command::Tenants { client, command } => AdminClient::new(&client)?.tenants(command).await,
        Command::Token { client, command } => AdminClient::new(&client)?.token(command).await,
        Command::Webhooks { client, command } => AdminClient::new(&client)?.webhooks(command).await,
        Command::ApiKeys { client, command } => AdminClient::new(&client)?.api_keys(command).await,
        Command::Audit { client, command } => AdminClient::new(&client)?.audit(command).await,
        Command::Authorize { client, args } => AdminClient::new(&client)?.authorize(args).await,
        Command::Events { client, args } => AdminClient::new(&client)?.events(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tokenvisor", &mut std::io::stdout());
            Ok(())
        }
    }
}
