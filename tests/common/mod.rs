//! Helpers the fixture-reading tests share: JSON arrays as vectors, and a relative error in f64.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::Value;

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

pub fn i32s(v: &Value) -> Vec<i32> {
    f64s(v).into_iter().map(|x| x as i32).collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    f64s(v).into_iter().map(|x| x as usize).collect()
}

/// ||a - b|| / ||b||, both f64.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

/// The device a parity test runs on: the simulator under `schedule`, or the GPU when
/// `EMRCLASS_TEST_DEVICE=cuda` (./gpu-check.sh sets it; the test then fails, not skips,
/// when no GPU is usable).
pub fn test_device(schedule: emrclass::Schedule) -> emrclass::Device {
    match std::env::var("EMRCLASS_TEST_DEVICE").as_deref() {
        Ok("cuda") => emrclass::Device::cuda()
            .unwrap_or_else(|e| panic!("EMRCLASS_TEST_DEVICE=cuda but no usable GPU: {e}")),
        Ok("simt") | Err(_) => emrclass::Device::simt(schedule),
        Ok(other) => panic!("EMRCLASS_TEST_DEVICE is `{other}`: expected cuda or simt"),
    }
}
