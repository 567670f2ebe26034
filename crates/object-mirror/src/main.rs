fn main() -> std::process::ExitCode {
    ncb_core::stage_main(&object_mirror::STAGE)
}
