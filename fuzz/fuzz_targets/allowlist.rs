//! The allowlist parser. Properties: never panics; every rule's canonical form is itself a
//! valid rule line that parses back to the same rule (the policy hash is over these forms);
//! every error names its line within the input.
#![no_main]

use egress_warden::allowlist::parse_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules, errors) = parse_text("fuzz.txt", text);
    let lines = text.lines().count().max(1);
    for e in &errors {
        assert!(e.line >= 1 && e.line <= lines, "{e}");
    }
    for rule in &rules {
        let canonical = rule.canonical();
        let (again, errors) = parse_text("canonical.txt", &canonical);
        assert!(errors.is_empty(), "{canonical:?}: {errors:?}");
        assert_eq!(again.len(), 1, "{canonical:?}");
        let back = &again[0];
        assert_eq!(
            (&back.pattern, back.ports, back.max_upload),
            (&rule.pattern, rule.ports, rule.max_upload),
            "{canonical:?}"
        );
        assert_eq!(back.canonical(), canonical);
    }
});
