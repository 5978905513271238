//! `emrclass gradcheck`: the correctness chain's checks, printed as a table.

use emrclass::check::registry;
use emrclass::rng::Rng;
use emrclass::Result;

use super::common::GlobalArgs;

/// Check each op's f64 reference against finite differences and its kernels against the
/// reference on fresh random inputs. Non-zero exit status on any failure.
#[derive(clap::Args)]
pub struct Args {
    /// Ops to check (all when none given): gemm, gemm_epilogue, softmax, reduce, sum_columns,
    /// add, scale, gelu, adamw, adamw8bit, convert_f16, attention, dropout, tanh, bert_encoder,
    /// layernorm, textcnn, bigru, bilstm, seq_pool, embedding, mlm_head, head, loss_ce,
    /// loss_weighted_ce, loss_focal, loss_ghmc, loss_ghmcs.
    ops: Vec<String>,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    let seed = global.seed();
    let checks = registry::select(&a.ops)?;
    let dev = global.open_device(seed)?;
    println!("seed {seed} (replay with --seed {seed})");
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for c in &checks {
        if let Some(gradient) = c.gradient {
            rows.extend(gradient(&mut rng));
        }
        rows.extend((c.kernel)(&dev, &mut rng)?);
    }
    println!(
        "{:<22} {:<9} {:<28} {:<34} {:>10} {:>8}  result",
        "op", "check", "device", "sizes", "error", "tol"
    );
    for r in &rows {
        println!(
            "{:<22} {:<9} {:<28} {:<34} {:>10.2e} {:>8.0e}  {}",
            r.op,
            r.check,
            r.device,
            r.sizes,
            r.error,
            r.tolerance,
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {failed} failed", rows.len() - failed);
    Ok(failed == 0)
}
