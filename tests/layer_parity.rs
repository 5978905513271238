//! PyTorch parity of the sequence layers: tests/fixtures/layers.json (make_layer_fixtures.py,
//! torch 2.9.1, float64) against the f64 reference (1e-9) and against the layers' kernels on
//! the simulator (1e-5): outputs and the gradients of every input and parameter.

mod common;
use common::{f32s, f64s, rel, usizes};

use emrclass::check::relative_error;
use emrclass::model::rnn::{BiRnn, Cell, RnnTensors};
use emrclass::model::textcnn::{TextCnn, TextCnnConfig};
use emrclass::reference::rnn::{self as rnn_ref, RnnParams};
use emrclass::reference::textcnn::{self as r, Conv};
use emrclass::{Device, Schedule};
use serde_json::Value;

fn fixtures() -> Vec<Value> {
    let v: Value = serde_json::from_str(include_str!("fixtures/layers.json")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn textcnn(case: &Value, dev: &Device) {
    let name = case["name"].as_str().unwrap();
    let lengths: Vec<i32> = usizes(&case["lengths"])
        .into_iter()
        .map(|l| l as i32)
        .collect();
    let (l, c, f) = (
        case["seq_len"].as_u64().unwrap() as usize,
        case["channels"].as_u64().unwrap() as usize,
        case["filters"].as_u64().unwrap() as usize,
    );
    let widths = usizes(&case["widths"]);
    let x = f64s(&case["x"]);
    let up = f64s(&case["upstream"]);
    let weights: Vec<Vec<f64>> = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(f64s)
        .collect();
    let biases: Vec<Vec<f64>> = case["biases"]
        .as_array()
        .unwrap()
        .iter()
        .map(f64s)
        .collect();
    let convs: Vec<Conv> = widths
        .iter()
        .enumerate()
        .map(|(i, &width)| Conv {
            width,
            weight: &weights[i],
            bias: &biases[i],
        })
        .collect();
    let (pooled, _) = r::forward(&x, &lengths, l, c, f, &convs);
    let (dx, grads) = r::backward(&x, &lengths, l, c, f, &convs, &up);
    assert!(
        rel(&pooled, &f64s(&case["pooled"])) < 1e-9,
        "{name}: reference pooled"
    );
    assert!(rel(&dx, &f64s(&case["dx"])) < 1e-9, "{name}: reference dx");
    for (i, (dw, db)) in grads.iter().enumerate() {
        assert!(
            rel(dw, &f64s(&case["weight_grads"][i])) < 1e-9,
            "{name}: reference dW {i}"
        );
        assert!(
            rel(db, &f64s(&case["bias_grads"][i])) < 1e-9,
            "{name}: reference db {i}"
        );
    }
    let host: Vec<(Vec<f32>, Vec<f32>)> = (0..widths.len())
        .map(|i| (f32s(&case["weights"][i]), f32s(&case["biases"][i])))
        .collect();
    let mut layer = TextCnn::from_host(
        dev,
        TextCnnConfig {
            channels: c,
            filters: f,
            widths: widths.clone(),
        },
        &host,
    )
    .unwrap();
    let out = layer
        .forward(&dev.upload(&f32s(&case["x"]), "x").unwrap(), &lengths, l)
        .unwrap();
    let err = relative_error(&out.to_host().unwrap(), &f64s(&case["pooled"]));
    assert!(err < 1e-5, "{name}: kernel pooled {err:e}");
    let dxk = layer
        .backward(&dev.upload(&f32s(&case["upstream"]), "up").unwrap())
        .unwrap();
    let err = relative_error(&dxk.to_host().unwrap(), &f64s(&case["dx"]));
    assert!(err < 1e-5, "{name}: kernel dx {err:e}");
    for i in 0..widths.len() {
        let e = relative_error(
            &layer.weight_grads[i].to_host().unwrap(),
            &f64s(&case["weight_grads"][i]),
        );
        assert!(e < 1e-5, "{name}: kernel dW {i} {e:e}");
        let e = relative_error(
            &layer.bias_grads[i].to_host().unwrap(),
            &f64s(&case["bias_grads"][i]),
        );
        assert!(e < 1e-5, "{name}: kernel db {i} {e:e}");
    }
}

fn rnn(case: &Value, dev: &Device) {
    let name = case["name"].as_str().unwrap();
    let cell = if case["kind"] == "gru" {
        Cell::Gru
    } else {
        Cell::Lstm
    };
    let lengths: Vec<i32> = usizes(&case["lengths"])
        .into_iter()
        .map(|l| l as i32)
        .collect();
    let (l, i, h) = (
        case["seq_len"].as_u64().unwrap() as usize,
        case["input"].as_u64().unwrap() as usize,
        case["hidden"].as_u64().unwrap() as usize,
    );
    let both = |what: &str, name: &str| [&case[what][name], &case[what][format!("{name}_reverse")]];
    let stacked = |what: &str, name: &str| -> Vec<f64> {
        both(what, name).iter().flat_map(|v| f64s(v)).collect()
    };
    let names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"];
    let [w_ih, w_hh, b_ih, b_hh] = names.map(|n| stacked("tensors", n));
    let x = f64s(&case["x"]);
    let up = f64s(&case["upstream"]);
    let p = RnnParams {
        cell,
        input: i,
        hidden: h,
        w_ih: &w_ih,
        w_hh: &w_hh,
        b_ih: &b_ih,
        b_hh: &b_hh,
    };
    assert!(
        rel(&rnn_ref::forward(&p, &x, &lengths, l), &f64s(&case["out"])) < 1e-9,
        "{name}: reference out"
    );
    let g = rnn_ref::backward(&p, &x, &lengths, l, &up);
    assert!(
        rel(&g.dx, &f64s(&case["dx"])) < 1e-9,
        "{name}: reference dx"
    );
    for (n, got) in names.iter().zip([&g.w_ih, &g.w_hh, &g.b_ih, &g.b_hh]) {
        assert!(
            rel(got, &stacked("grads", n)) < 1e-9,
            "{name}: reference d{n}"
        );
    }
    let pair = |n: &str| both("tensors", n).map(f32s);
    let t = RnnTensors {
        weight_ih: pair(names[0]),
        weight_hh: pair(names[1]),
        bias_ih: pair(names[2]),
        bias_hh: pair(names[3]),
    };
    let mut layer = BiRnn::from_host(dev, cell, i, h, &t).unwrap();
    let out = layer
        .forward(&dev.upload(&f32s(&case["x"]), "x").unwrap(), &lengths, l)
        .unwrap()
        .to_host()
        .unwrap();
    let e = relative_error(&out, &f64s(&case["out"]));
    assert!(e < 1e-5, "{name}: kernel out {e:e}");
    let dx = layer
        .backward(&dev.upload(&f32s(&case["upstream"]), "up").unwrap())
        .unwrap();
    let e = relative_error(&dx.to_host().unwrap(), &f64s(&case["dx"]));
    assert!(e < 1e-5, "{name}: kernel dx {e:e}");
    for (k, n) in names.iter().enumerate() {
        let e = relative_error(&layer.grads[k].to_host().unwrap(), &stacked("grads", n));
        assert!(e < 1e-5, "{name}: kernel d{n} {e:e}");
    }
}

fn run_all(dev: &Device) {
    let cases = fixtures();
    assert!(cases.len() >= 7);
    for case in &cases {
        match case["kind"].as_str().unwrap() {
            "textcnn" => textcnn(case, dev),
            "gru" | "lstm" => rnn(case, dev),
            other => panic!("unknown fixture kind {other}"),
        }
    }
}

#[test]
fn layers_match_pytorch_forward_order() {
    run_all(&common::test_device(Schedule::Forward));
}

#[test]
fn layers_match_pytorch_random_order() {
    run_all(&common::test_device(Schedule::Random(17)));
}

#[test]
fn textcnn_rejects_all_padding_rows_and_bad_shapes() {
    let dev = common::test_device(Schedule::Forward);
    let cfg = TextCnnConfig {
        channels: 2,
        filters: 3,
        widths: vec![2],
    };
    let mut layer =
        TextCnn::from_host(&dev, cfg.clone(), &[(vec![0.1; 12], vec![0.0; 3])]).unwrap();
    let x = dev.zeros::<f32>(2 * 4 * 2, "x").unwrap();
    let e = layer.forward(&x, &[4, 0], 4).err().unwrap().to_string();
    assert!(e.contains("sequence 1 is all padding"), "{e}");
    let e = layer.forward(&x, &[4, 5], 4).err().unwrap().to_string();
    assert!(e.contains("sequence 1 has length 5"), "{e}");
    let e = layer.forward(&x, &[4, 4, 4], 4).err().unwrap().to_string();
    assert!(e.contains("[3, 4, 2] expected"), "{e}");
    let e = TextCnn::from_host(&dev, cfg, &[(vec![0.1; 11], vec![0.0; 3])])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expected [3, 2, 2]"), "{e}");
    let e = layer
        .backward(&dev.zeros::<f32>(6, "d").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("without forward"), "{e}");
}

/// The recurrences walk time inside one launch: forward + backward launch the same number of
/// kernels for 3 tokens as for 40.
#[test]
fn recurrent_layers_launch_a_constant_number_of_kernels() {
    for cell in [Cell::Gru, Cell::Lstm] {
        let mut counts = Vec::new();
        for len in [3usize, 40] {
            let dev = common::test_device(Schedule::Forward);
            let mut rng = emrclass::rng::Rng::new(1);
            let mut layer = BiRnn::new(&dev, cell, 6, 5, &mut rng).unwrap();
            let x = dev.zeros::<f32>(2 * len * 6, "x").unwrap();
            let lengths = [len as i32, (len / 2) as i32];
            let before = dev.launch_count();
            layer.forward(&x, &lengths, len).unwrap();
            layer
                .backward(&dev.zeros::<f32>(2 * len * 10, "dout").unwrap())
                .unwrap();
            counts.push(dev.launch_count() - before);
        }
        assert_eq!(
            counts[0], counts[1],
            "{cell:?}: launches grow with the length: {counts:?}"
        );
        assert!(counts[0] > 0);
    }
}

#[test]
fn oversized_hidden_and_unknown_heads_are_named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let mut rng = emrclass::rng::Rng::new(2);
    let e = BiRnn::new(&dev, Cell::Lstm, 4, 600, &mut rng)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hidden 600 is over the supported 512"), "{e}");
    let e = "bert-crf"
        .parse::<emrclass::model::heads::HeadKind>()
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no head named `bert-crf`") && e.contains("textcnn-bigru"),
        "{e}"
    );
    // `cls` and `paper` need the encoder's pooled [CLS].
    let cfg =
        emrclass::model::heads::HeadConfig::new(emrclass::model::heads::HeadKind::Paper, 4, 3);
    let mut head = emrclass::model::heads::Head::new(&dev, cfg, &mut rng).unwrap();
    let x = dev.zeros::<f32>(2 * 3 * 4, "x").unwrap();
    let e = head
        .forward(&x, &[3, 2], 3, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs the encoder's pooled [CLS]"), "{e}");
}
