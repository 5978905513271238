//! What a training step pays besides arithmetic: kernel launches and host waits, counted on
//! the sizing device (it runs the engine's own step code and counts launches and copies, but
//! runs no kernels), at BERT-base + `paper` head shapes. The counts are the same on a GPU:
//! they depend on the code path, not on the device. Printed for the record (`--nocapture`);
//! asserted: a steady state (every step after the first makes the same calls), launches that
//! do not grow with the sequence length, and a bounded number of host waits.

use emrclass::bench::pretrain_step::{pretrain_step, MlmStepModel};
use emrclass::bench::step::{step_overheads, StepModel, StepShape, TakesSteps};
use emrclass::model::bert::EncoderMemory;
use emrclass::model::heads::HeadKind;
use emrclass::model::loss::LossKind;
use emrclass::Device;

fn bert_base(len: usize) -> StepShape {
    StepShape {
        layers: 12,
        hidden: 768,
        heads: 12,
        intermediate: 3072,
        vocab: 21128,
        batch: 16,
        len,
        classes: 44,
        head: HeadKind::Paper,
        loss: LossKind::GhmCs,
        memory: EncoderMemory::default(),
        optimizer: Default::default(),
        mask_rate: None,
    }
}

#[test]
fn launches_and_host_waits_per_step_are_steady_and_bounded() {
    let mut per_len = Vec::new();
    for len in [128, 512] {
        let dev = Device::sizing();
        let mut m = StepModel::new(&dev, &bert_base(len)).unwrap();
        m.step().unwrap(); // the first step allocates the optimizer's moments
        let second = step_overheads(&dev, &mut m).unwrap();
        let third = step_overheads(&dev, &mut m).unwrap();
        assert_eq!(
            second, third,
            "L{len}: every steady step makes the same calls"
        );
        println!(
            "BERT-base + paper, B16 L{len}: {} kernel launches, {} host waits per step",
            second.0, second.1
        );
        per_len.push(second);
    }
    let (l128, l512) = (per_len[0], per_len[1]);
    // The BiGRU runs its recurrence inside one kernel per direction: nothing is per token.
    assert_eq!(
        l128.0, l512.0,
        "launches must not grow with the sequence length"
    );
    assert_eq!(
        l128.1, l512.1,
        "host waits must not grow with the sequence length"
    );
    // Per step: token ids and mask in (4), the embeddings' gradient grouping (3), lengths for
    // the head, the Text-CNN and the BiGRU (3), labels in and loss out (2),
    // the gradient norm out (1). Never one per tensor or per layer.
    assert!(l128.1 <= 13, "{} host waits per step", l128.1);
    // Launches: 565 since the post-LayerNorms' backward writes the dropout's gradient in the
    // same pass and the residual gradients join in the GEMM epilogues (613 before: 4 a layer);
    // 566 since split-K: the classifier's 16 x 44 product over 2048 features is one 64 x 64
    // tile, which a 6-SM card runs as 6 slices of k and a summing pass.
    assert!(l128.0 <= 566, "{} kernel launches per step", l128.0);
}

/// `bench step --pretrain` on the sizing device (it runs `emrclass pretrain`'s step code and
/// counts its bytes and calls): a steady step whose launches and host waits do not grow with
/// the length; its peak is exactly what the memory plan measures for the same step (the bench's
/// batch is the planner's); its row says what it timed, for PyTorch to time the same.
#[test]
fn pretraining_step_is_steady_and_peaks_where_the_plan_says() {
    let mut per_len = Vec::new();
    for len in [128, 512] {
        let dev = Device::sizing();
        let shape = StepShape {
            mask_rate: Some(0.15),
            ..bert_base(len)
        };
        let row = pretrain_step(&dev, &shape, 1, None).unwrap();
        let mut m = MlmStepModel::new(&dev, &shape).unwrap();
        m.step().unwrap(); // the first step allocates the optimizer's moments
        let second = step_overheads(&dev, &mut m).unwrap();
        assert_eq!(
            second,
            step_overheads(&dev, &mut m).unwrap(),
            "L{len}: steady"
        );
        assert_eq!(
            second,
            (row.launches_per_step, row.host_syncs_per_step),
            "L{len}: the row counts a steady step"
        );
        let plan =
            emrclass::plan::plan(&shape.plan_request(1 << 40, dev.multiprocessors())).unwrap();
        assert_eq!(
            plan.strategy.memory,
            EncoderMemory::default(),
            "nothing to save"
        );
        assert_eq!(
            row.peak_bytes, plan.measured.peak,
            "L{len}: the bench's peak is the plan's"
        );
        let per_row = ((0.15 * (len - 2) as f64).round()) as usize;
        assert_eq!(row.spec["objective"], "mlm");
        assert_eq!(row.spec["masked_per_row"], per_row);
        assert!(row.shape.contains(&format!("MLM {per_row}/{len} masked")));
        let phases: Vec<&str> = row.phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            phases,
            [
                "encoder forward",
                "MLM head forward + loss",
                "MLM head backward",
                "encoder backward",
                "clip + AdamW"
            ]
        );
        println!(
            "BERT-base + MLM head, B16 L{len}, {per_row} masked a row: {} kernel launches, {} \
             host waits per step, peak {:.1} MiB",
            row.launches_per_step,
            row.host_syncs_per_step,
            row.peak_bytes as f64 / 1048576.0
        );
        per_len.push((row.launches_per_step, row.host_syncs_per_step));
    }
    assert_eq!(
        per_len[0], per_len[1],
        "calls must not grow with the length"
    );
}
