//! The `dnsward` binary: hands the command line to `cli`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
