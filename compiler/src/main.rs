use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llamac::gguf::GgufFile;

/// llamac: compiles GGUF language models ahead of time into llamart execution plans.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer and tensors.
    Inspect {
        /// The GGUF model file.
        model: PathBuf,
        /// Print one JSON object instead of text: {"version", "architecture", "metadata",
        /// "tensors": [{"name", "type", "shape", "bytes", "offset"}], ...}. Arrays longer than 64
        /// items are summarized as {"type": "array", "element_type", "len", "head"}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamac: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let file = GgufFile::open(&model).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
            let text = if json {
                serde_json::to_string_pretty(&llamac::inspect::to_json(&file))? + "\n"
            } else {
                llamac::inspect::render_text(&file)
            };
            write_stdout(&text)
        }
    }
}

/// Writes to stdout; a reader that went away (`llamac inspect m.gguf | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
