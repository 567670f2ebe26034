fn main() -> std::process::ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flag = filesbackup::privilege::FLAG;
    // The reader binary (a copy named filesbackup-reader*, which sudoers and file capabilities
    // name) is never anything else, and nothing that merely starts like the flag (sudoers
    // matches `--privileged-reader *` against the arguments joined by spaces) runs as it is.
    let as_reader = filesbackup::privilege::is_reader_binary()
        || argv.get(1).is_some_and(|a| a.to_string_lossy().starts_with(flag));
    if as_reader {
        if argv.get(1).is_none_or(|a| a != flag) {
            eprintln!("filesbackup: error: the privileged reader takes {flag} as its first argument, alone");
            return ncb_core::ExitStatus::Usage.into();
        }
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
