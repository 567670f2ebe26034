fn main() -> std::process::ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == filesbackup::privilege::FLAG) {
        // First, before any thread or file: the reader's state, or nothing at all.
        match filesbackup::privilege::enter() {
            Ok(state) => {
                argv.remove(1);
                let _ = filesbackup::privilege::STATE.set(state);
            }
            Err(e) => {
                eprintln!("filesbackup: error: {e}");
                return ncb_core::ExitStatus::Usage.into();
            }
        }
    }
    ncb_core::stage::stage_main_from(&filesbackup::STAGE, argv).into()
}
