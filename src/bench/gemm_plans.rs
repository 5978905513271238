//! How the launcher's GEMM plans (`GemmPlan::for_shape`) fare against the other plans timed on
//! the same products (`bench gemm --tiles all`): the check of the cost model on a real card,
//! and the tile rates it measures for `GemmTile::relative_rate`.

use crate::ops::{Gemm, GemmPlan, GemmTile};

/// One timed product under one plan.
#[derive(Clone, Copy, Debug)]
pub struct TimedPlan {
    pub gemm: Gemm,
    pub plan: GemmPlan,
    /// Whether the launcher would pick this plan for this product.
    pub picked: bool,
    pub ms: f64,
}

/// Where the launcher's pick lost most against the fastest plan timed on the same product.
#[derive(Debug, PartialEq)]
pub struct WorstPick {
    pub product: String,
    pub picked: GemmPlan,
    pub picked_ms: f64,
    pub fastest: GemmPlan,
    pub fastest_ms: f64,
}

#[derive(Debug, PartialEq)]
pub struct PlanCheck {
    /// Products with the picked plan and at least one other timed.
    pub products: usize,
    /// Of which the picked plan was the fastest.
    pub picked_fastest: usize,
    pub worst: Option<WorstPick>,
    /// Each smaller tile's arithmetic rate relative to 128 x 128 as measured: the median, over
    /// products both ran unsplit, of (the model's work for the tile / its time) over (the same
    /// for 128 x 128). The model's own values are `GemmTile::relative_rate`.
    pub rates: Vec<(GemmTile, f64, usize)>,
}

/// The identity of a product: shapes, layouts and batch.
fn key(g: &Gemm) -> (usize, usize, usize, bool, bool, usize) {
    (g.m, g.n, g.k, g.trans_a, g.trans_b, g.batch)
}

fn describe(g: &Gemm) -> String {
    let layout = |t: bool| if t { "T" } else { "N" };
    format!(
        "{}x{}x{} {}{}",
        g.m,
        g.n,
        g.k,
        layout(g.trans_a),
        layout(g.trans_b)
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Compares the picked plans with the others timed on a card of `multiprocessors` SMs.
pub fn check(timed: &[TimedPlan], multiprocessors: usize) -> PlanCheck {
    let mut products: Vec<Vec<&TimedPlan>> = Vec::new();
    for t in timed {
        match products
            .iter_mut()
            .find(|p| key(&p[0].gemm) == key(&t.gemm))
        {
            Some(p) => p.push(t),
            None => products.push(vec![t]),
        }
    }
    let (mut compared, mut picked_fastest, mut worst) = (0, 0, None::<WorstPick>);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); GemmTile::ALL.len()];
    for runs in &products {
        let fastest = runs.iter().min_by(|a, b| a.ms.total_cmp(&b.ms)).unwrap();
        if let Some(picked) = runs.iter().find(|t| t.picked).filter(|_| runs.len() > 1) {
            compared += 1;
            if picked.ms <= fastest.ms {
                picked_fastest += 1;
            }
            let loss = picked.ms / fastest.ms;
            if worst
                .as_ref()
                .is_none_or(|w| loss > w.picked_ms / w.fastest_ms)
            {
                worst = Some(WorstPick {
                    product: describe(&picked.gemm),
                    picked: picked.plan,
                    picked_ms: picked.ms,
                    fastest: fastest.plan,
                    fastest_ms: fastest.ms,
                });
            }
        }
        // Work per time for each unsplit tile, at the model's rate 1.
        let speed = |tile: GemmTile| {
            runs.iter()
                .find(|t| t.plan == GemmPlan::unsplit(tile))
                .map(|t| {
                    let work = GemmPlan::unsplit(tile).estimated_cost(&t.gemm, multiprocessors)
                        * tile.relative_rate();
                    work / t.ms
                })
        };
        if let Some(large) = speed(GemmTile::T128x128) {
            for (i, tile) in GemmTile::ALL.into_iter().enumerate().skip(1) {
                if let Some(s) = speed(tile) {
                    ratios[i].push(s / large);
                }
            }
        }
    }
    let rates = GemmTile::ALL
        .into_iter()
        .zip(ratios)
        .skip(1)
        .filter(|(_, r)| !r.is_empty())
        .map(|(tile, r)| (tile, median(r.clone()), r.len()))
        .collect();
    PlanCheck {
        products: compared,
        picked_fastest,
        worst: worst.filter(|w| w.picked_ms > w.fastest_ms),
        rates,
    }
}

/// The check as lines for the bench's output (nothing when no product had more than one plan).
pub fn summary(c: &PlanCheck, multiprocessors: usize) -> Vec<String> {
    let mut lines = Vec::new();
    if c.products > 0 {
        lines.push(format!(
            "GEMM plans on this card ({multiprocessors} SMs): the launcher's pick was the fastest plan timed on {} of {} products",
            c.picked_fastest, c.products
        ));
    }
    if let Some(w) = &c.worst {
        lines.push(format!(
            "  worst pick: {} with {} in {:.3} ms; {} took {:.3} ms ({:.2}x)",
            w.product,
            w.picked.name(),
            w.picked_ms,
            w.fastest.name(),
            w.fastest_ms,
            w.picked_ms / w.fastest_ms
        ));
    }
    for (tile, rate, n) in &c.rates {
        lines.push(format!(
            "  {} runs at {rate:.2} of 128x128's rate (median of {n} products; the model assumes {:.2})",
            tile.name(),
            tile.relative_rate()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times as the model predicts them for tiles running at `rates` (128 x 128 first), for
    /// every tile unsplit and the launcher's pick (as `bench gemm --tiles all` times them).
    fn modelled(g: Gemm, rates: [f64; 3], sms: usize) -> Vec<TimedPlan> {
        let picked = GemmPlan::for_shape(&g, sms);
        let mut plans: Vec<GemmPlan> = GemmTile::ALL.map(GemmPlan::unsplit).into();
        if !plans.contains(&picked) {
            plans.push(picked);
        }
        plans
            .into_iter()
            .map(|plan| {
                let i = GemmTile::ALL.iter().position(|&t| t == plan.tile).unwrap();
                let work = plan.estimated_cost(&g, sms) * plan.tile.relative_rate();
                TimedPlan {
                    gemm: g,
                    plan,
                    picked: plan == picked,
                    ms: work / rates[i] * 1e-9,
                }
            })
            .collect()
    }

    #[test]
    fn the_check_recovers_tile_rates_and_finds_the_worst_pick() {
        let sms = 132;
        let shapes = [(2048, 768, 768), (2048, 2304, 768), (768, 768, 2048)];
        let products = shapes.map(|(m, n, k)| Gemm::new(m, n, k, false, false));
        // The model picks 64 x 64 for 2048 x 768 x 768 on this card (384 blocks).
        assert_eq!(
            GemmPlan::for_shape(&products[0], sms),
            GemmPlan::unsplit(GemmTile::T64x64)
        );
        // At the model's own rates every pick is the fastest plan timed.
        let model = [1.0, 0.92, 0.77];
        let timed: Vec<TimedPlan> = products
            .iter()
            .flat_map(|&g| modelled(g, model, sms))
            .collect();
        let c = check(&timed, sms);
        assert_eq!((c.products, c.picked_fastest), (3, 3));
        assert!(c.worst.is_none());
        // A card where 128 x 64 runs at 0.9 of 128 x 128 and 64 x 64 at 0.5: the rates come
        // back, and the 64 x 64 pick is the worst.
        let card = [1.0, 0.9, 0.5];
        let timed: Vec<TimedPlan> = products
            .iter()
            .flat_map(|&g| modelled(g, card, sms))
            .collect();
        let c = check(&timed, sms);
        let got: Vec<(GemmTile, f64)> = c.rates.iter().map(|&(t, r, _)| (t, r)).collect();
        assert_eq!(got.len(), 2);
        assert!(
            (got[0].1 - 0.9).abs() < 1e-9 && (got[1].1 - 0.5).abs() < 1e-9,
            "{got:?}"
        );
        let w = c.worst.as_ref().expect("a pick lost");
        assert_eq!(w.product, "2048x768x768 NN");
        assert_eq!(w.picked, GemmPlan::unsplit(GemmTile::T64x64));
        assert!(w.picked_ms > w.fastest_ms);
        assert!(c.picked_fastest < c.products);
        let text = summary(&c, sms).join("\n");
        assert!(text.contains("64x64 runs at 0.50"), "{text}");
        assert!(
            text.contains("worst pick: 2048x768x768 NN with 64x64"),
            "{text}"
        );
        // One plan per product: nothing to compare, nothing said.
        let g = Gemm::new(64, 64, 64, false, false);
        let lone = vec![modelled(g, model, sms).remove(0)];
        assert!(summary(&check(&lone, sms), sms).is_empty());
    }
}
