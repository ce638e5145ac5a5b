//! The config file: any text is a config or an error, never a panic; a
//! config that passes its check gives every derived setting without error.
#![no_main]

use hyve_server::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    if cfg.check().is_ok() {
        cfg.limits().expect("checked limits");
        cfg.net_limits().expect("checked net limits");
        cfg.vmm().expect("checked vm settings");
        cfg.accel().expect("checked accel");
        cfg.task_limits().expect("checked task limits");
    }
});
