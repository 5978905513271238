//! Link 4 of the correctness chain: every engine kernel compiles through NVRTC to CUBIN for
//! sm_61 and sm_90, and ptxas's report obeys the rules (no spills in hot kernels, at most
//! 48 KiB shared memory per block on sm_61). NVRTC needs no GPU; when it cannot be found this
//! test fails with the instructions to get it (./test.sh installs it): it never skips.

use emrclass::device::{nvrtc, KERNELS};
use emrclass::kernel_report::{self, occupancy, GTX_1050_TI};

#[test]
fn every_kernel_compiles_for_sm61_and_sm90_within_the_rules() {
    let (major, _) = nvrtc::version().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(major, 12, "sm_61 needs NVRTC 12.x");
    let rows = kernel_report::build().unwrap_or_else(|e| panic!("{e}"));
    let engine_kernels = KERNELS.iter().filter(|k| !k.test_only).count();
    assert_eq!(
        rows.len(),
        2 * engine_kernels,
        "one row per kernel and arch"
    );
    for r in &rows {
        assert!(
            r.resources.registers > 0,
            "{} ({}) reports no registers",
            r.kernel,
            r.arch
        );
    }
    // Each GEMM instance stages two buffers of its A and B slices (BK x tile, rows padded by 4).
    for (kernel, bm, bn, bk, blocks_per_sm) in [
        ("gemm_f32_128x128", 128, 128, 8, 2),
        ("gemm_f32_128x64", 128, 64, 16, 2),
        ("gemm_f32_64x64", 64, 64, 16, 4),
    ] {
        let gemm = rows
            .iter()
            .find(|r| r.kernel == kernel && r.arch == "sm_61")
            .unwrap_or_else(|| panic!("{kernel} is not in the report"));
        assert_eq!(
            gemm.resources.shared_bytes,
            2 * bk * ((bm + 4) + (bn + 4)) * 4,
            "{kernel}: double-buffered {bk}-deep slices"
        );
        assert!(gemm.hot, "{kernel}");
        // __launch_bounds__(256, blocks): that many blocks per sm_61 SM (64K registers).
        assert!(
            gemm.resources.registers <= 65536 / (256 * blocks_per_sm),
            "{kernel}: {:?}",
            gemm.resources
        );
    }
    let problems = kernel_report::problems(&rows);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn ptxas_report_parsing() {
    let log = "ptxas info    : 0 bytes gmem\n\
               ptxas info    : Compiling entry function 'k1' for 'sm_61'\n\
               ptxas info    : Function properties for k1\n\
               ptxas         .     16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
               ptxas info    : Used 69 registers, used 1 barriers, 8192 bytes smem, 416 bytes cmem[0]\n\
               ptxas info    : Function properties for k2\n\
               ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
               ptxas info    : Used 10 registers, used 0 barriers, 344 bytes cmem[0]\n";
    let r = nvrtc::parse_ptxas_report(log);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].name.as_str(), r[0].registers, r[0].shared_bytes),
        ("k1", 69, 8192)
    );
    assert_eq!(
        (
            r[0].stack_bytes,
            r[0].spill_store_bytes,
            r[0].spill_load_bytes
        ),
        (16, 8, 12)
    );
    assert_eq!(
        (r[1].name.as_str(), r[1].registers, r[1].shared_bytes),
        ("k2", 10, 0)
    );
}

#[test]
fn occupancy_on_a_gtx_1050_ti() {
    // 69 registers round to 72 per thread: 2304 per warp, 8 warps a block -> 3 blocks, 24/64 warps.
    assert_eq!(
        occupancy(&GTX_1050_TI, 69, 8192, 256),
        (3, 0.375, "registers")
    );
    // 32 registers, 128 threads: 16 blocks by registers and by threads -> full occupancy.
    let (blocks, occ, _) = occupancy(&GTX_1050_TI, 32, 0, 128);
    assert_eq!((blocks, occ), (16, 1.0));
    // 40 KiB of shared memory: 2 blocks fit in 96 KiB.
    assert_eq!(
        occupancy(&GTX_1050_TI, 16, 40 * 1024, 64),
        (2, 0.0625, "shared memory")
    );
}

/// `emrclass kernels FILE --cubin-dir DIR` writes the machine code the engine would load, one
/// CUBIN per file and architecture, for cuobjdump (benches/pascal-model/sass_report.py): an ELF
/// image for that SM (CUDA keeps the SM in e_flags' low byte) holding every kernel of the file,
/// and nothing for the files not asked for.
#[test]
fn kernels_cubin_dir_writes_each_files_cubin() {
    let dir = std::env::temp_dir().join(format!("emrclass-cubins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["kernels", "softmax", "--cubin-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (arch, sm) in [("sm_61", 61), ("sm_90", 90)] {
        let path = dir.join(format!("softmax-{arch}.cubin"));
        let cubin = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            &cubin[..4],
            b"\x7fELF",
            "{} is not an ELF image",
            path.display()
        );
        let flags = u32::from_le_bytes(cubin[48..52].try_into().unwrap());
        assert_eq!(flags & 0xff, sm, "{} is not for {arch}", path.display());
        let softmax_kernels: Vec<_> = KERNELS.iter().filter(|k| k.file == "softmax.cu").collect();
        assert!(!softmax_kernels.is_empty());
        for k in softmax_kernels {
            assert!(
                cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()),
                "{} does not hold {}",
                path.display(),
                k.name
            );
        }
    }
    let written = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(written, 2, "only softmax's two CUBINs");
    std::fs::remove_dir_all(&dir).unwrap();
}
