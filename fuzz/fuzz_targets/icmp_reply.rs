//! The ICMP probe's reply parser: never panics; it accepts only IPv4 datagrams carrying an
//! ICMP echo reply whose checksum verifies, and reports their identifier and sequence.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = lb_user::probe::EchoReply::parse(data) {
        let hlen = usize::from(data[0] & 0x0f) * 4;
        assert_eq!(data[0] >> 4, 4);
        assert_eq!(data[9], 1, "protocol ICMP");
        let icmp = &data[hlen..];
        assert_eq!((icmp[0], icmp[1]), (0, 0), "echo reply");
        assert_eq!(lb_common::csum::checksum(0, icmp), [0, 0]);
        assert_eq!(r.ident, u16::from_be_bytes([icmp[4], icmp[5]]));
        assert_eq!(r.seq, u16::from_be_bytes([icmp[6], icmp[7]]));
    }
});
