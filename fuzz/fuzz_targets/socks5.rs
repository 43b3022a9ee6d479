//! The SOCKS5 greeting and request, over an in-memory stream. Properties: never panics or
//! hangs on a short input; a request is only ever taken after the no-authentication method
//! was selected, from a version-5 greeting, for CONNECT.
#![no_main]

use egress_warden::listener::socks::{Address, handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let mut written = Vec::new();
    let result = runtime.block_on(async {
        let mut stream = tokio::io::join(data, &mut written);
        handshake(&mut stream).await
    });
    if let Ok((address, _port)) = result {
        assert_eq!(data[0], 5);
        assert!(written.starts_with(&[5, 0]), "{written:?}");
        let methods = usize::from(data[1]);
        let request = &data[2 + methods..];
        assert_eq!(&request[..2], &[5, 1], "only CONNECT is taken");
        if let Address::Domain(name) = address {
            assert!(name.len() <= 255);
        }
    }
});
