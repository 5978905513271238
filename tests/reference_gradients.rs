//! Link 1 of the correctness chain: the f64 reference's backward passes agree with central
//! finite differences (relative error <= 1e-6), for every registered op that has a gradient.

use emrclass::check::{finite_difference, registry, GRADIENT_TOLERANCE};
use emrclass::rng::Rng;

#[test]
fn reference_backward_matches_finite_differences() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let mut checked = 0;
    for check in registry::ALL {
        let Some(gradient) = check.gradient else {
            continue;
        };
        for row in gradient(&mut rng) {
            checked += 1;
            assert!(
                row.passed(),
                "{} {}: error {:e} > {GRADIENT_TOLERANCE:e} (EMRCLASS_SEED={seed})",
                row.op,
                row.sizes,
                row.error
            );
        }
    }
    assert!(checked >= 20, "only {checked} gradient checks ran");
}

#[test]
fn finite_difference_checker_catches_a_wrong_gradient() {
    // f(x) = sum x^3; the right gradient is 3x^2. A gradient off by 1% must fail the tolerance.
    let x = [0.3, -1.2, 2.0, 0.7];
    let f = |x: &[f64]| x.iter().map(|v| v * v * v).sum::<f64>();
    let right: Vec<f64> = x.iter().map(|v| 3.0 * v * v).collect();
    let wrong: Vec<f64> = right
        .iter()
        .enumerate()
        .map(|(i, g)| if i == 2 { g * 1.01 } else { *g })
        .collect();
    assert!(finite_difference(f, &x, &right, 1e-5).worst_error < GRADIENT_TOLERANCE);
    let bad = finite_difference(f, &x, &wrong, 1e-5);
    assert_eq!(bad.worst_index, 2);
    assert!(bad.worst_error > 1e-3);
}
