//! Issue 19, item 4: GPU failures are named, with what to do. The CUDA driver's errors go through
//! one pure mapping (src/device/failure.rs), so each is raised here with a fake error code: out
//! of GPU memory, a kernel fault (reported by a later call), a launch the GPU cannot run, a
//! driver too old for the NVRTC. The engine's own memory budget is exceeded for real on the
//! simulator and through the CLI, and NVRTC compiles a broken kernel file for real.

use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;
use emrclass::device::failure::{check_driver, from_driver, During};
use emrclass::device::KernelFile;
use emrclass::{Device, Error, Schedule};

fn says(e: &Error, needles: &[&str]) {
    let text = e.to_string();
    for n in needles {
        assert!(text.contains(n), "the error does not say `{n}`:\n{text}");
    }
}

#[test]
fn out_of_gpu_memory_names_the_request_and_what_to_try() {
    let e = from_driver(
        DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY),
        During::Alloc {
            what: "ffn activations",
            request: 96 << 20,
            live: 3000 << 20,
            memory: Some((40 << 20, 4096 << 20)),
        },
        Some("`gemm_f32_128x128` (...)"),
    );
    assert!(matches!(e, Error::OutOfDeviceMemory { .. }), "{e:?}");
    says(
        &e,
        &[
            "out of GPU memory",
            "96.0 MiB requested for ffn activations",
            "3000.0 MiB held by the engine",
            "40.0 MiB free of 4096.0 MiB",
            "emrclass plan",
            "--memory-budget",
            "--batch-size",
        ],
    );
}

#[test]
fn a_kernel_fault_names_the_last_launch_and_how_to_find_the_access() {
    for code in [
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        CUresult::CUDA_ERROR_MISALIGNED_ADDRESS,
        CUresult::CUDA_ERROR_ASSERT,
    ] {
        // Faults surface at a later call: a synchronisation, a copy, even an allocation.
        let later = [
            During::Other {
                what: "waiting for the GPU",
            },
            During::Alloc {
                what: "logits",
                request: 1024,
                live: 0,
                memory: None,
            },
        ];
        for during in later {
            let e = from_driver(
                DriverError(code),
                during,
                Some("`attention_forward_flash` (grid (2, 12, 16), block (128, 1, 1), 0 bytes of dynamic shared memory)"),
            );
            assert!(matches!(e, Error::KernelFault { .. }), "{e:?}");
            says(
                &e,
                &[
                    &format!("{code:?}"),
                    "attention_forward_flash",
                    "grid (2, 12, 16)",
                    "restart the process",
                    "--device simt",
                    "CUDA_LAUNCH_BLOCKING=1",
                ],
            );
        }
    }
    let e = from_driver(
        DriverError(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS),
        During::Launch {
            launch: "`layernorm_forward` (grid (8, 1, 1))",
        },
        None,
    );
    says(
        &e,
        &[
            "layernorm_forward",
            "a load or store outside any allocation",
        ],
    );
}

#[test]
fn a_launch_the_gpu_cannot_run_names_the_kernel() {
    let launch =
        "`gemm_f32_128x128` (grid (4, 4, 1), block (256, 1, 1), 0 bytes of dynamic shared memory)";
    let e = from_driver(
        DriverError(CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES),
        During::Launch { launch },
        None,
    );
    says(
        &e,
        &[
            "gemm_f32_128x128",
            "registers or shared memory",
            "emrclass kernels",
        ],
    );
    let e = from_driver(
        DriverError(CUresult::CUDA_ERROR_INVALID_VALUE),
        During::Launch { launch },
        None,
    );
    says(&e, &["gemm_f32_128x128", "beyond this GPU's limits"]);
}

#[test]
fn a_driver_older_than_the_nvrtc_is_refused_with_what_to_do() {
    // Before loading anything: a CUDA 11 driver cannot run NVRTC 12's CUBINs.
    let e = check_driver(
        (11, 4),
        "/usr/lib/libcuda.so.470",
        (12, 9),
        "NVRTC 12.9 (/x/libnvrtc.so.12)",
    )
    .unwrap_err();
    assert!(matches!(e, Error::DriverTooOld { .. }), "{e:?}");
    says(
        &e,
        &[
            "CUDA 11.4, /usr/lib/libcuda.so.470",
            "NVRTC 12.9",
            "update the driver to one for CUDA 12.0 or newer",
            "EMRCLASS_NVRTC_DIR",
        ],
    );
    // Minor-version compatibility: a 12.2 driver runs 12.9's CUBINs; newer drivers too.
    assert!(check_driver((12, 2), "d", (12, 9), "n").is_ok());
    assert!(check_driver((13, 0), "d", (12, 9), "n").is_ok());
    // When the driver refuses the image itself.
    for code in [
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
    ] {
        let e = from_driver(
            DriverError(code),
            During::LoadModule {
                file: "gemm",
                arch: "sm_61",
                nvrtc: "NVRTC 12.9 (/x/libnvrtc.so.12)",
                nvrtc_version: (12, 9),
                driver: "CUDA 12.0, /usr/lib/libcuda.so.1",
            },
            None,
        );
        assert!(matches!(e, Error::DriverTooOld { .. }), "{e:?}");
        says(
            &e,
            &[
                "CUDA 12.0",
                "gemm.cu for sm_61",
                &format!("{code:?}"),
                "CUDA 12.9 or newer",
            ],
        );
    }
}

#[test]
fn the_engines_budget_exceeded_on_the_simulator_says_what_to_try() {
    let dev = Device::simt(Schedule::Forward).with_budget(4 << 20);
    let _kept = dev.zeros::<f32>(1 << 19, "embeddings").unwrap();
    let Err(e) = dev.zeros::<f32>(3 << 19, "attention scores") else {
        panic!("2 + 6 MiB fit a 4 MiB budget")
    };
    assert!(matches!(e, Error::OutOfBudget { .. }), "{e:?}");
    says(
        &e,
        &[
            "6.0 MiB requested for attention scores",
            "2.0 MiB live",
            "the budget is 4.0 MiB",
            "emrclass plan",
            "--memory-budget",
        ],
    );
    // Nothing was counted for the refused request; small sizes are exact bytes.
    assert_eq!(dev.memory().live(), 2 << 20);
    let Err(e) = Device::simt(Schedule::Forward)
        .with_budget(1000)
        .zeros::<f32>(300, "logits")
    else {
        panic!("1200 bytes fit 1000")
    };
    says(
        &e,
        &["1200 bytes requested for logits with 0 bytes live; the budget is 1000 bytes"],
    );
}

#[test]
fn the_budget_exceeded_in_training_is_an_error_not_a_panic() {
    let out = std::env::temp_dir().join(format!("emrclass-oom-{}", std::process::id()));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args([
            "--device",
            "simt",
            "--memory-budget",
            "321MiB",
            "train",
            "--quiet",
        ])
        .args(["--synthetic-scale", "0.02", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: memory budget exceeded")
            && err.contains("the budget is 1.0 MiB")
            && err.contains("emrclass plan"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_nvrtc_compile_error_names_the_kernel_file_the_nvrtc_and_the_log() {
    let broken = KernelFile {
        name: "broken_on_purpose",
        test_only: true,
        source: "extern \"C\" __global__ void broken_on_purpose(float *x) {\n    x[0] = undeclared_name;\n}\n",
    };
    let Err(e) = emrclass::device::nvrtc::compile(&broken, "sm_61") else {
        panic!("a kernel using an undeclared name compiled")
    };
    assert!(matches!(e, Error::Compile { .. }), "{e:?}");
    says(
        &e,
        &[
            "broken_on_purpose",
            "sm_61",
            "NVRTC 12.",
            "libnvrtc",
            "undeclared_name",
            "(2)",
        ],
    );
}
