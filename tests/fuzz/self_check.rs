//! The harness fails on a wrong result: fake readers — one that panics, one that allocates
//! 64 MiB, one whose error names no file, one that allocates 1 TiB, one that hangs — must each
//! be caught, with the input kept. The last two end the process, so they run in a child
//! process of this test binary (their tests do nothing unless `EMRCLASS_FUZZ_SELF_CHECK` is
//! set).

use std::path::Path;
use std::time::Duration;

use emrclass::Error;

use super::{failures_dir, fuzz, serial, Naming, Seed, Target};

const SEED_INPUT: &str = "a valid input, 1,2,3\n";

/// A target whose reader accepts the seed and does `bad` with every other input.
fn fake(name: &'static str, bad: fn(&Path) -> emrclass::Result<()>) -> Target {
    let dir = std::env::temp_dir()
        .join(format!("emrclass-fuzz-{}", std::process::id()))
        .join(name);
    Target::new(
        name,
        dir,
        vec![Seed::new("input.txt", SEED_INPUT)],
        Naming::File,
        move |path| {
            if std::fs::read(path).unwrap() == SEED_INPUT.as_bytes() {
                Ok(())
            } else {
                bad(path)
            }
        },
    )
}

/// Fuzzes a fake target, which must fail; returns the report, its kept input removed.
fn failure_of(target: &Target) -> String {
    let outcome = fuzz(target, 7, Duration::from_secs(10), 1000);
    let failure = outcome
        .failure
        .unwrap_or_else(|| panic!("reader `{}` passed the fuzz test", target.name));
    let kept = failures_dir().join(target.name);
    assert!(kept.is_dir(), "no input kept under {}", kept.display());
    let _ = std::fs::remove_dir_all(kept);
    let _ = std::fs::remove_dir_all(&target.dir);
    failure
}

#[test]
fn panics_big_allocations_and_unnamed_errors_are_caught() {
    let _serial = serial();
    let panics = fake("self-check-panic", |_| panic!("a reader bug"));
    let panic = failure_of(&panics);
    assert!(
        panic.contains("panicked at tests/fuzz/self_check.rs"),
        "{panic}"
    );
    assert!(panic.contains("a reader bug"), "{panic}");
    let allocates = fake("self-check-allocation", |_| {
        std::hint::black_box(vec![1u8; 64 << 20]);
        Ok(())
    });
    assert!(failure_of(&allocates).contains("one allocation of 67108864 bytes"));
    let unnamed = fake("self-check-unnamed", |_| {
        Err(Error::Invalid("bad input".into()))
    });
    assert!(failure_of(&unnamed).contains("does not name the file: bad input"));
    let named = fake("self-check-named", |path| {
        Err(Error::Invalid(format!("{}: bad input", path.display())))
    });
    assert!(fuzz(&named, 7, Duration::from_millis(200), 1000)
        .failure
        .is_none());
}

/// Runs `test` of this binary in a child process (with `EMRCLASS_FUZZ_SELF_CHECK` set), which
/// must abort; returns its stderr.
fn aborting_child(test: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--include-ignored", "--nocapture"])
        .env("EMRCLASS_FUZZ_SELF_CHECK", "1")
        .env("EMRCLASS_FUZZ_CALL_LIMIT", "0.5")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{test} did not abort:\n{stderr}");
    stderr
}

#[test]
fn giant_allocations_and_hangs_end_the_process_with_the_input_kept() {
    let giant = aborting_child("fuzz::self_check::child_allocates_one_tebibyte");
    assert!(
        giant.contains(
            "FUZZ FAILURE in reader `self-check-giant`: a single allocation of 1099511627776 bytes"
        ),
        "{giant}"
    );
    let hang = aborting_child("fuzz::self_check::child_hangs");
    assert!(
        hang.contains("FUZZ FAILURE in reader `self-check-hang`: one call ran over 500ms"),
        "{hang}"
    );
    for (report, name) in [(giant, "self-check-giant"), (hang, "self-check-hang")] {
        assert!(report.contains("input kept at"), "{report}");
        let _ = std::fs::remove_dir_all(failures_dir().join(name));
    }
}

fn in_child() -> bool {
    std::env::var_os("EMRCLASS_FUZZ_SELF_CHECK").is_some()
}

#[test]
#[ignore = "run by giant_allocations_and_hangs_end_the_process_with_the_input_kept"]
fn child_allocates_one_tebibyte() {
    if in_child() {
        let _serial = serial();
        fuzz(
            &fake("self-check-giant", |_| {
                std::hint::black_box(Vec::<u8>::with_capacity(1 << 40));
                Ok(())
            }),
            7,
            Duration::from_secs(10),
            1000,
        );
    }
}

#[test]
#[ignore = "run by giant_allocations_and_hangs_end_the_process_with_the_input_kept"]
fn child_hangs() {
    if in_child() {
        let _serial = serial();
        fuzz(
            &fake("self-check-hang", |_| {
                std::thread::sleep(Duration::from_secs(10));
                Ok(())
            }),
            7,
            Duration::from_secs(10),
            1000,
        );
    }
}
