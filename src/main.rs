//! The `emrclass` command line: parses, then hands the command to its file in `cli/`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "emrclass",
    version,
    about = "GPU training engine for unbalanced Chinese EMR classification"
)]
struct Cli {
    #[command(flatten)]
    global: cli::common::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Each command's help is the doc comment of its `Args` in `cli/`.
#[derive(Subcommand)]
enum Command {
    Kernels(cli::kernels::Args),
    Bench(cli::bench::Args),
    Train(cli::train::Args),
    Experiment(cli::experiment::Args),
    Pretrain(cli::pretrain::Args),
    Eval(cli::eval::Args),
    Predict(cli::predict::Args),
    Encode(cli::encode::Args),
    Plan(cli::plan::Args),
    Export(cli::export::Args),
    Report(cli::report::Args),
    Convert(cli::convert::Args),
    Gradcheck(cli::gradcheck::Args),
    Launch(cli::launch::Args),
}

/// The parser, with the global flags shown only under the commands that use them.
fn command() -> clap::Command {
    cli::common::hide_globals(Cli::command(), &["convert", "report", "kernels", "launch"])
}

fn run(cli: &Cli) -> emrclass::Result<bool> {
    // The global flags first: every command checks its own before its device opens.
    cli.global.check()?;
    let global = &cli.global;
    match &cli.command {
        Command::Kernels(a) => cli::kernels::run(a),
        Command::Bench(a) => cli::bench::run(global, a),
        Command::Train(a) => cli::train::run(global, a),
        Command::Experiment(a) => cli::experiment::run(global, a),
        Command::Pretrain(a) => cli::pretrain::run(global, a),
        Command::Eval(a) => cli::eval::run(global, a),
        Command::Predict(a) => cli::predict::run(global, a),
        Command::Encode(a) => cli::encode::run(global, a),
        Command::Plan(a) => cli::plan::run(global, a),
        Command::Export(a) => cli::export::run(global, a),
        Command::Report(a) => cli::report::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Gradcheck(a) => cli::gradcheck::run(global, a),
        Command::Launch(a) => cli::launch::run(a),
    }
}

fn main() -> ExitCode {
    // Writing into a closed pipe (`emrclass ... | head`) ends the process quietly, as for any
    // Unix tool, instead of panicking in println!.
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(emrclass::Error::Interrupted { signal, message }) => {
            emrclass::note!("{message}");
            ExitCode::from((128 + signal) as u8)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
