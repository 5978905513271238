//! Builds the SIMT simulator: compiles every `kernels/*.cu` (and the deliberately broken
//! `tests/kernels/*.cu`) with the host C++ compiler against the simulator runtime, and
//! generates the kernel table that both devices launch by name.
//!
//! For each `extern "C" __global__` kernel it emits a C++ entry point taking the same
//! argument array that `cuLaunchKernel` takes (one pointer per parameter), and a Rust table
//! entry with the parameter names and kinds, so a launch is type-checked identically on
//! Cuda and Simt.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

struct Kernel {
    name: String,
    hot: bool,
    params: Vec<(String, &'static str)>,
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let runtime_dir = root.join("src/device/simt");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=tests/kernels");
    println!("cargo:rerun-if-changed=src/device/simt");
    println!("cargo:rerun-if-env-changed=EMRCLASS_SIMT_FIBERS");

    let mut sources = Vec::new();
    for (dir, is_test) in [("kernels", false), ("tests/kernels", true)] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "cu"));
        files.sort();
        for f in files {
            sources.push((f, is_test));
        }
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&runtime_dir)
        .include(root.join("kernels"))
        // Shared memory and the current fiber are thread-locals read in every inner loop: the
        // default (general-dynamic) TLS model would call __tls_get_addr on each access.
        .flag_if_supported("-ftls-model=initial-exec")
        .flag_if_supported("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-variable")
        .file(runtime_dir.join("simt_runtime.cpp"));
    if std::env::var("EMRCLASS_SIMT_FIBERS").as_deref() == Ok("ucontext") {
        build.define("SIMT_FORCE_UCONTEXT", None);
    }
    // Kernels call fmaf in their inner loops. Without the FMA instruction it is a library
    // call (a third of the simulator's GEMM time); with it, one instruction that rounds once,
    // as on the GPU. Used when the machine that builds has it (every x86-64 since 2013).
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma")
        && std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
    {
        build.flag("-mfma");
    }

    let mut table = String::new();
    let mut externs = String::new();
    let mut file_table = String::new();
    for (path, is_test) in &sources {
        let text = std::fs::read_to_string(path).unwrap();
        let kernels = parse_kernels(&text, path);
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let file_name = path.file_name().unwrap().to_string_lossy().to_string();
        // The simulator compiles a copy that poisons each static shared array per block.
        let marked = out.join(format!("simt_src_{stem}.cu"));
        let copy = format!(
            "#line 1 \"{}\"\n{}",
            path.display(),
            mark_static_shared(&text, path)
        );
        std::fs::write(&marked, copy).unwrap();
        let mut unit = format!(
            "#include \"{}\"\n#include \"simt_call.h\"\n",
            marked.display()
        );
        for k in &kernels {
            writeln!(
                unit,
                "extern \"C\" void simt_entry_{0}(void **args) {{ simt::call({0}, args); }}",
                k.name
            )
            .unwrap();
            writeln!(
                externs,
                "    fn simt_entry_{}(args: *mut *mut c_void);",
                k.name
            )
            .unwrap();
            let params: Vec<String> = k
                .params
                .iter()
                .map(|(n, kind)| format!("ParamInfo {{ name: \"{n}\", kind: ParamKind::{kind} }}"))
                .collect();
            writeln!(
                table,
                "    KernelInfo {{ name: \"{}\", file: \"{}\", hot: {}, test_only: {}, params: &[{}], simt_entry: simt_entry_{} }},",
                k.name,
                file_name,
                k.hot,
                is_test,
                params.join(", "),
                k.name
            )
            .unwrap();
        }
        let unit_path = out.join(format!("simt_unit_{stem}.cpp"));
        std::fs::write(&unit_path, unit).unwrap();
        build.file(unit_path);
        writeln!(
            file_table,
            "    KernelFile {{ name: \"{}\", test_only: {}, source: include_str!(\"{}\") }},",
            file_name,
            is_test,
            path.display()
        )
        .unwrap();
    }
    std::fs::write(
        out.join("simt_call.h"),
        "#pragma once\n#include <cstddef>\n#include <utility>\nnamespace simt {\n\
         template <typename... P, std::size_t... I>\n\
         void call_impl(void (*kernel)(P...), void **args, std::index_sequence<I...>) {\n\
         kernel(*static_cast<P *>(args[I])...);\n}\n\
         template <typename... P>\nvoid call(void (*kernel)(P...), void **args) {\n\
         call_impl(kernel, args, std::index_sequence_for<P...>{});\n}\n}\n",
    )
    .unwrap();
    build.include(&out);
    build.compile("emrclass_simt");

    let rust = format!(
        "// Generated by build.rs from the kernel sources. Do not edit.\n\
         extern \"C\" {{\n{externs}}}\n\
         pub static KERNELS: &[KernelInfo] = &[\n{table}];\n\
         pub static KERNEL_FILES: &[KernelFile] = &[\n{file_table}];\n\
         pub static COMMON_HEADER: &str = include_str!(\"{}\");\n",
        root.join("kernels/common.cuh").display()
    );
    std::fs::write(out.join("kernel_table.rs"), rust).unwrap();
}

/// Removes `//` and `/* */` comments (kernels carry no string literals with those in them).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            out.push(' ');
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn parse_kernels(text: &str, path: &Path) -> Vec<Kernel> {
    let text = strip_comments(text);
    let marker = "extern \"C\" __global__";
    let mut kernels = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let open = rest.find('(').unwrap();
        // Between the marker and the first '(' stand `void`, HOT_KERNEL, __launch_bounds__ and the name.
        let mut head = rest[..open].split_whitespace().collect::<Vec<_>>();
        let mut body_start = open;
        if head.last() == Some(&"__launch_bounds__") {
            let close = rest[open..].find(')').unwrap() + open;
            let after = &rest[close + 1..];
            let open2 = after.find('(').unwrap();
            head.extend(after[..open2].split_whitespace());
            body_start = close + 1 + open2;
        }
        let name = head.last().unwrap().to_string();
        let hot = head.contains(&"HOT_KERNEL");
        let close = rest[body_start..].find(')').unwrap() + body_start;
        let param_text = &rest[body_start + 1..close];
        let params = param_text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let tokens: Vec<&str> = p
                    .split(|c: char| c.is_whitespace() || c == '*')
                    .filter(|t| !t.is_empty() && *t != "__restrict__" && *t != "const")
                    .collect();
                let (pname, ty) = tokens.split_last().unwrap();
                let pointer = p.contains('*');
                let kind = param_kind(&ty.join(" "), pointer).unwrap_or_else(|| {
                    panic!(
                        "{}: kernel {name}: parameter `{p}` has a type the launcher does not know",
                        path.display()
                    )
                });
                (pname.to_string(), kind)
            })
            .collect();
        kernels.push(Kernel { name, hot, params });
        rest = &rest[close..];
    }
    kernels
}

fn param_kind(ty: &str, pointer: bool) -> Option<&'static str> {
    Some(match (ty, pointer) {
        ("float", true) => "PtrF32",
        ("__half", true) => "PtrF16",
        ("int", true) => "PtrI32",
        ("unsigned" | "unsigned int", true) => "PtrU32",
        ("unsigned char", true) => "PtrU8",
        ("unsigned long long", true) => "PtrU64",
        ("float", false) => "F32",
        ("int", false) => "I32",
        ("unsigned" | "unsigned int", false) => "U32",
        ("long long", false) => "I64",
        ("unsigned long long", false) => "U64",
        _ => return None,
    })
}

/// The kernel source with `SIMT_STATIC_SHARED(name);` after each static `__shared__` array's
/// declaration, on the same line (so line numbers stay those of the file). Declarations must
/// fit on one line; `extern __shared__` (dynamic shared memory) is left alone.
fn mark_static_shared(text: &str, path: &Path) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let Some(at) = code.find("__shared__") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        if code[..at].trim_end().ends_with("extern") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let end = code[at..].find(';').map(|e| at + e).unwrap_or_else(|| {
            panic!(
                "{}:{}: a static __shared__ declaration must fit on one line",
                path.display(),
                n + 1
            )
        });
        let decl = &code[at..end];
        let before_name = decl.find('[').unwrap_or(decl.len());
        let name: String = decl[..before_name]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(
            !name.is_empty(),
            "{}:{}: no name in `{decl}`",
            path.display(),
            n + 1
        );
        out.push_str(&line[..=end]);
        out.push_str(&format!(" SIMT_STATIC_SHARED({name});"));
        out.push_str(&line[end + 1..]);
        out.push('\n');
    }
    out
}
