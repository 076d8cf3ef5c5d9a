//! `ember`: the command-line entry point. Thin by design: parsing and
//! printing here, everything else in the library crates.

mod attention_args;
mod bench;
mod bench_engine;
mod cpu_args;
mod chat;
mod device;
mod engine_args;
mod eval;
mod generate;
mod model_args;
mod openai_client;
mod parallel;
mod progress;
mod serve;
mod summarize;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ember", version, about = "Ember: an OpenAI-compatible LLM inference gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a continuation of one prompt.
    Generate(generate::GenerateArgs),
    /// Chat with a model in the terminal.
    Chat(chat::ChatArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Measure throughput and latency under concurrent load.
    Bench(bench::BenchArgs),
    /// Long-context quality against an OpenAI-compatible server (RULER-style tasks).
    Eval(eval::EvalArgs),
    /// Summarize a long document, or answer a question from it, map-reduce
    /// style against an OpenAI-compatible server.
    Summarize(summarize::SummarizeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Summarize(args) => summarize::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
