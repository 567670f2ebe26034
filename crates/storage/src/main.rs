fn main() -> std::process::ExitCode {
    ncb_core::stage_main(&storage::STAGE)
}
