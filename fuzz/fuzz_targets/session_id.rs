//! `SessionId` parsing against `uuid`'s: on any string it never panics, accepts exactly the
//! 36-character hyphenated form that `uuid` accepts (either case), and the id it returns is
//! `uuid`'s and displays as the input in lower case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_tracker::SessionId;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ours = text.parse::<SessionId>();
    // `uuid` also takes the simple, braced and URN forms; of 36 bytes, only the hyphenated.
    let theirs = if text.len() == 36 {
        Uuid::try_parse(text).ok()
    } else {
        None
    };
    match (&ours, theirs) {
        (Ok(id), Some(uuid)) => {
            assert_eq!(*id.as_uuid(), uuid, "{text:?}");
            assert_eq!(id.to_string(), text.to_ascii_lowercase());
            assert_eq!(id.to_string().parse::<SessionId>().as_ref(), Ok(id));
            assert_eq!(format!("{id:?}"), format!("SessionId({id})"));
        }
        (Err(err), None) => {
            let message = err.to_string();
            assert!(message.starts_with("invalid session id: "), "{message}");
        }
        (ours, theirs) => panic!("{text:?}: we say {ours:?}, uuid says {theirs:?}"),
    }
});
