//! The `idguard` binary: a thin entry point; everything lives in `idguard::cli`.

fn main() -> std::process::ExitCode {
    idguard::cli::main()
}
