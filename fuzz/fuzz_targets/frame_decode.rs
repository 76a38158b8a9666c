//! Arbitrary bytes into the frame decoder: it must never panic, and a decoded frame must
//! re-encode to something that decodes to the same frame.
#![no_main]

use ferry_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = Frame::decode(data) {
        assert!(used <= data.len());
        let again = Frame::decode(&frame.to_bytes()).expect("re-encoded frame decodes");
        assert_eq!(again.map(|(f, _)| f), Some(frame));
    }
});
