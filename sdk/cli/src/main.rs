//! `mpreg`: the MPREG command-line client. Everything lives in the `mpreg_cli` library.

fn main() -> std::process::ExitCode {
    mpreg_cli::main()
}
