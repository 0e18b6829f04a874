//! The HTTP probe's status-line parser: never panics; a code comes only from
//! `HTTP/1.x NNN[ reason]`, and it is the three digits written there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(code) = lb_user::probe::parse_status_line(data) {
        assert!(data.starts_with(b"HTTP/1."), "{data:?}");
        let digits = data.get(9..12).expect("three digits after `HTTP/1.x `");
        let written: u16 = std::str::from_utf8(digits)
            .expect("digits")
            .parse()
            .expect("a number");
        assert_eq!(code, written);
        assert!(matches!(data.get(12), None | Some(b' ')));
    }
});
