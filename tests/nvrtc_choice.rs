//! The NVRTC the engine compiles with is the one its documented search found (EMRCLASS_NVRTC_DIR,
//! the wheel under target/nvrtc, then the system), whatever else the machine has: a decoy
//! `libnvrtc.so` of another version placed first on LD_LIBRARY_PATH — what a system CUDA 11.8
//! toolkit amounts to — is never used, and `emrclass kernels` names the file in use and its
//! version. The decoy is a tiny C library built here with the C compiler the build needs anyway.

use std::path::{Path, PathBuf};
use std::process::Command;

use emrclass::device::nvrtc;

/// A library exporting NVRTC's entry points that says it is NVRTC 11.8 and fails everything else.
const DECOY_SOURCE: &str = r#"
int nvrtcVersion(int *major, int *minor) { *major = 11; *minor = 8; return 0; }
const char *nvrtcGetErrorString(int status) { (void)status; return "decoy NVRTC 11.8"; }
int nvrtcCreateProgram(void **prog, const char *src, const char *name, int n,
                       const char *const *headers, const char *const *names) {
    (void)prog; (void)src; (void)name; (void)n; (void)headers; (void)names; return 3;
}
int nvrtcCompileProgram(void *prog, int n, const char *const *options) {
    (void)prog; (void)n; (void)options; return 3;
}
"#;

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emrclass-nvrtc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds the decoy as `dir/file_name` (soname libnvrtc.so.11.2, as CUDA 11.8's is).
fn build_decoy(dir: &Path, file_name: &str) -> PathBuf {
    let src = dir.join("decoy.c");
    std::fs::write(&src, DECOY_SOURCE).unwrap();
    let out = dir.join(file_name);
    for compiler in ["cc", "gcc", "clang", "c++", "g++", "clang++"] {
        let built = Command::new(compiler)
            .args([
                "-x",
                "c",
                "-shared",
                "-fPIC",
                "-Wl,-soname,libnvrtc.so.11.2",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status();
        if matches!(built, Ok(s) if s.success()) {
            return out;
        }
    }
    panic!("no C compiler (cc, gcc, clang, c++, g++, clang++) could build the decoy NVRTC");
}

fn emrclass(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    cmd.args(args).env_remove("EMRCLASS_NVRTC_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_decoy_nvrtc_first_on_the_library_path_is_not_used() {
    // The library the engine's own search picks, as this (test) process sees it.
    let chosen = nvrtc::Nvrtc::get().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chosen.version.0, 12);
    let dir = scratch_dir("decoy");
    build_decoy(&dir, "libnvrtc.so");
    let (ok, stdout, stderr) = emrclass(&["kernels", "elementwise"], &[("LD_LIBRARY_PATH", &dir)]);
    assert!(ok, "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "NVRTC {}.{} (",
            chosen.version.0, chosen.version.1
        )),
        "the report must open with the library in use: {first}"
    );
    let shown = first
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no path in {first}"));
    assert_eq!(
        std::fs::canonicalize(shown).unwrap(),
        std::fs::canonicalize(&chosen.path).unwrap(),
        "the CLI and the library agree on the file"
    );
    assert!(
        !stdout.contains("11.8") && !stderr.contains("11.8"),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("gelu"),
        "the elementwise kernels are reported: {stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_version_in_the_named_folder_is_refused_by_name() {
    let dir = scratch_dir("wrong-version");
    let decoy = build_decoy(&dir, nvrtc::NVRTC_FILE);
    let (ok, stdout, stderr) =
        emrclass(&["kernels", "elementwise"], &[("EMRCLASS_NVRTC_DIR", &dir)]);
    assert!(
        !ok,
        "a folder holding NVRTC 11.8 must not be used: {stdout}"
    );
    assert!(
        stderr.contains(&decoy.display().to_string())
            && stderr.contains("NVRTC 11.8, not 12.x")
            && stderr.contains("pip install"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_named_folder_without_nvrtc_is_an_error_not_a_fallback() {
    let dir = scratch_dir("empty");
    let (ok, _, stderr) = emrclass(&["kernels", "gemm"], &[("EMRCLASS_NVRTC_DIR", &dir)]);
    assert!(!ok);
    assert!(
        stderr.contains("EMRCLASS_NVRTC_DIR") && stderr.contains(&dir.display().to_string()),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_kernel_file_lists_the_files() {
    let (ok, _, stderr) = emrclass(&["kernels", "no_such_file"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("no kernel file `no_such_file`") && stderr.contains("gemm.cu"),
        "{stderr}"
    );
}
