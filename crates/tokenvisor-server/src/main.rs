//! The `tokenvisor` binary: wires the configuration, the store, the supervisor and the
//! admin API together, and is the CLI of a running service. All behaviour lives in the
//! library crates.

mod client;
mod commands;
mod settings;
mod telemetry;

use clap::{Parser, Subcommand};

/// tokenvisor keeps every tenant's OAuth 2.0 connections alive.
#[derive(Debug, Parser)]
#[command(name = "tokenvisor", version, about)]
struct Cli {
    #[command(flatten)]
    settings: settings::Settings,
    #[command(flatten)]
    client: client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the supervisor and the admin API until SIGINT or SIGTERM.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print a table of connections, reading the database directly.
    Status,
    /// Integrations of a running service (admin API).
    #[command(subcommand)]
    Integrations(client::IntegrationsCommand),
    /// Connections of a running service (admin API).
    #[command(subcommand)]
    Connections(client::ConnectionsCommand),
    /// Access tokens of a running service (admin API).
    #[command(subcommand)]
    Token(client::TokenCommand),
    /// Start connecting (or re-authorizing) a tenant: prints the URL to send them to.
    Authorize(client::AuthorizeArgs),
    /// Tail the event stream of a running service.
    Events,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.settings.resolve() {
        Ok(config) => run(cli.command, &config, &cli.client).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: &settings::Config, client_args: &client::ClientArgs) -> anyhow::Result<()> {
    let server_side = matches!(command, Command::Serve | Command::Migrate | Command::Status);
    if server_side {
        let telemetry = telemetry::init();
        let result = match command {
            Command::Serve => commands::serve(config, &telemetry).await,
            Command::Migrate => commands::migrate(config).await,
            _ => commands::status(config).await,
        };
        telemetry.shutdown();
        return result;
    }
    let admin = client::AdminClient::new(client_args, config.admin_token_for_client()?)?;
    match command {
        Command::Integrations(command) => admin.integrations(command).await,
        Command::Connections(command) => admin.connections(command).await,
        Command::Token(command) => admin.token(command).await,
        Command::Authorize(args) => admin.authorize(args).await,
        Command::Events => admin.events().await,
        Command::Serve | Command::Migrate | Command::Status => unreachable!("handled above"),
    }
}
