//! Link 3 of the correctness chain: every registered kernel against the f64 reference, on
//! fresh random inputs of awkward sizes with NaN-poisoned outputs, on the simulator under
//! three thread schedules and the block-race check, with the same bits on one OS thread and
//! on several (and on CUDA when EMRCLASS_TEST_CUDA=1 and a GPU is present).

use emrclass::check::{registry, Row};
use emrclass::rng::Rng;
use emrclass::{Device, Schedule};

fn run_all(dev: &Device) {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let mut failures: Vec<Row> = Vec::new();
    let mut count = 0;
    for check in registry::ALL {
        let rows = (check.kernel)(dev, &mut rng).unwrap_or_else(|e| panic!("{}: {e}", check.name));
        assert!(!rows.is_empty(), "{} checked nothing", check.name);
        count += rows.len();
        failures.extend(rows.into_iter().filter(|r| !r.passed()));
    }
    assert!(
        failures.is_empty(),
        "{} of {count} kernel checks failed on {} (replay with EMRCLASS_SEED={seed}):\n{failures:#?}",
        failures.len(),
        dev.describe()
    );
}

#[test]
fn kernels_match_reference_forward_schedule() {
    run_all(&Device::simt(Schedule::Forward));
}

#[test]
fn kernels_match_reference_reverse_schedule() {
    run_all(&Device::simt(Schedule::Reverse));
}

#[test]
fn kernels_match_reference_random_schedule() {
    run_all(&Device::simt(Schedule::Random(Rng::fresh_seed())));
}

/// Every kernel with its blocks run one at a time in a shuffled order, then in the opposite
/// order: no two blocks write the same byte, and no block reads what another wrote.
#[test]
fn kernels_match_reference_under_the_block_race_check() {
    let dev = Device::simt(Schedule::Random(Rng::fresh_seed()));
    dev.set_block_check(true);
    run_all(&dev);
}

/// The whole suite, same inputs, blocks on one OS thread and on four (more than this machine's
/// cores, so blocks interleave): every byte the host reads back is the same.
#[test]
fn kernels_give_the_same_bits_on_one_thread_and_on_four() {
    let seed = Rng::fresh_seed();
    let digest = |threads: usize| {
        let dev = Device::simt(Schedule::Forward);
        dev.set_simt_threads(threads);
        dev.start_read_digest();
        let mut rng = Rng::new(seed);
        for check in registry::ALL {
            (check.kernel)(&dev, &mut rng).unwrap_or_else(|e| panic!("{}: {e}", check.name));
        }
        dev.read_digest()
            .expect("the simulator keeps a digest once started")
    };
    assert_eq!(
        digest(1),
        digest(4),
        "results differ between 1 and 4 threads (replay with EMRCLASS_SEED={seed})"
    );
}

/// On a machine with a GPU, `EMRCLASS_TEST_CUDA=1` makes this test require and use it.
#[test]
fn kernels_match_reference_on_cuda_when_requested() {
    if std::env::var("EMRCLASS_TEST_CUDA").as_deref() != Ok("1") {
        eprintln!("EMRCLASS_TEST_CUDA is not 1: the CUDA run is left to ./gpu-check.sh");
        return;
    }
    let dev = Device::cuda().expect("EMRCLASS_TEST_CUDA=1 but no usable CUDA device");
    run_all(&dev);
}

#[test]
fn error_metrics_never_let_nan_pass() {
    use emrclass::check::{relative_error, worst};
    assert!(relative_error(&[1.0, f32::NAN], &[1.0, 2.0]).is_nan());
    assert!(worst(1e-9, f64::NAN).is_nan() && worst(f64::NAN, 1e-9).is_nan());
    assert_eq!(worst(1e-9, 2e-9), 2e-9);
    let row = Row {
        op: "x".into(),
        check: "kernel",
        device: "d".into(),
        sizes: "s".into(),
        error: f64::NAN,
        tolerance: 1.0,
    };
    assert!(!row.passed());
}
