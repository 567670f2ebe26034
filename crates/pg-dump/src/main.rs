fn main() -> std::process::ExitCode {
    ncb_core::stage_main(&pg_dump::STAGE)
}
