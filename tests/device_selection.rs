//! Device choice without a GPU: `--device cuda` is a clear error naming the missing library,
//! `--device auto` falls back to the simulator and says so. On a machine with a GPU (CUDA
//! driver present) the expectations flip, and the test checks that instead.

use std::process::Command;

use emrclass::{Device, DeviceChoice, Error};

fn driver_present() -> bool {
    // SAFETY: the same probe the engine makes: it only tries to dlopen libcuda's names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_and_auto_falls_back() {
    if driver_present() {
        // A driver is installed: auto takes the GPU, or says why it could not.
        let (dev, fallback) = Device::open(DeviceChoice::Auto).expect("auto never fails");
        assert!(dev.is_cuda() != fallback.is_some());
        return;
    }
    match Device::cuda() {
        Err(Error::MissingLibrary { library, how }) => {
            assert!(library.contains("libcuda.so"), "{library}");
            assert!(
                how.contains("NVIDIA driver") && how.contains("--device simt"),
                "{how}"
            );
        }
        Err(other) => panic!("expected a missing-library error, got {other}"),
        Ok(_) => panic!("a CUDA device opened on a machine without the NVIDIA driver"),
    }
    let (dev, fallback) = Device::open(DeviceChoice::Auto).unwrap();
    assert!(!dev.is_cuda());
    assert!(fallback.unwrap().contains("libcuda.so"));
}

#[test]
fn cli_reports_the_chosen_device() {
    let exe = env!("CARGO_BIN_EXE_emrclass");
    let out = Command::new(exe)
        .args(["--device", "auto", "gradcheck", "scale"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}{stdout}");
    assert!(stderr.contains("device: "), "{stderr}");
    if !driver_present() {
        assert!(
            stderr.contains("simt") && stderr.contains("auto: CUDA unavailable"),
            "{stderr}"
        );
        let out = Command::new(exe)
            .args(["--device", "cuda", "gradcheck"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: the CUDA driver (libcuda.so.1) could not be loaded"),
            "{stderr}"
        );
    }
    assert!(
        stdout.contains("scale") && stdout.contains("pass") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    let out = Command::new(exe)
        .args(["gradcheck", "no_such_op"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no op named `no_such_op`"));
}

/// The simulator's threads: `--simt-threads`, else EMRCLASS_SIMT_THREADS, else every core; the
/// device line says how many, and a bad value is a named error before any work.
#[test]
fn simulator_threads_come_from_the_flag_or_the_environment() {
    let exe = env!("CARGO_BIN_EXE_emrclass");
    let device_line = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(exe);
        c.args(["--device", "simt"])
            .args(args)
            .args(["gradcheck", "scale"]);
        match env {
            Some(v) => c.env("EMRCLASS_SIMT_THREADS", v),
            None => c.env_remove("EMRCLASS_SIMT_THREADS"),
        };
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let (ok, stderr) = device_line(&["--simt-threads", "3"], Some("5"));
    assert!(
        ok && stderr.contains("simt (schedule: forward, 3 threads)"),
        "{stderr}"
    );
    let (ok, stderr) = device_line(&[], Some("5"));
    assert!(ok && stderr.contains("5 threads"), "{stderr}");
    let (ok, stderr) = device_line(&["--simt-threads", "1"], None);
    assert!(ok && stderr.contains("1 thread)"), "{stderr}");
    let cores = std::thread::available_parallelism().unwrap().get();
    let (ok, stderr) = device_line(&[], None);
    let want = format!("{cores} thread");
    assert!(ok && stderr.contains(&want), "{stderr}");
    let (ok, stderr) = device_line(&[], Some("many"));
    assert!(
        !ok && stderr.contains("EMRCLASS_SIMT_THREADS is `many`"),
        "{stderr}"
    );
    let (ok, stderr) = device_line(&["--simt-threads", "0"], None);
    assert!(!ok && stderr.contains("--simt-threads"), "{stderr}");
}
