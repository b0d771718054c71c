//! `mpreg`: the MPREG command-line client. Everything lives in [`mpreg::cli`].

fn main() -> std::process::ExitCode {
    mpreg::cli::main()
}
