//! The configuration (JSON → validation): never panics, and every error says where: a syntax
//! error its line, an invalid file the field.
#![no_main]

use lb_user::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_json(text) {
        Ok(config) => {
            // What validated is within the datapath's capacities.
            assert!(config.targets.len() <= lb_common::maps::MAX_TARGETS as usize);
            assert!(config.vips.len() <= lb_common::maps::MAX_VIPS as usize);
        }
        Err(ConfigError::Syntax { line, message, .. }) => {
            assert!(line >= 1 && !message.is_empty());
        }
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(
                !field.is_empty() && !reason.is_empty(),
                "{field:?}: {reason:?}"
            );
        }
        Err(e) => panic!("from_json reads no file, yet: {e}"),
    }
});
