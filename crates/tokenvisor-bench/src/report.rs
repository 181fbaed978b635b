//! The table the harness prints and writes to BENCHMARKS.md.

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// At which size.
    pub size: String,
    /// The measurement.
    pub value: String,
    /// The target, if the issue set one.
    pub target: String,
    /// Whether the target is met (`None`: no target).
    pub met: Option<bool>,
}

impl Row {
    pub fn new(figure: &str, size: impl ToString, value: String, target: &str, met: Option<bool>) -> Self {
        Self {
            figure: figure.into(),
            size: size.to_string(),
            value,
            target: target.into(),
            met,
        }
    }
}

/// The markdown table of `rows`.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| figure | size | measured | target | met |\n|---|---|---|---|---|\n");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.figure, row.size, row.value, row.target, met
        ));
    }
    out
}
