//! The house rules of `src/` (README, "Layout"), read from the source itself with `syn`:
//! - no file imports a file that imports it back, directly or through others;
//! - no folder (or top-level file) of `src/` imports one that imports it back: the rooms stack
//!   into floors, and the README's layout lists them top to bottom;
//! - `main.rs` only parses and dispatches (under 100 lines), and each command has its own file;
//! - the README's layout names every folder and top-level file of `src/`, and nothing else.
//!
//! What counts as an import: every path in a file that leads to an item of another file — `use`
//! items, paths of two or more segments in expressions, types and patterns, and such paths
//! inside macro calls — followed through re-exports to the file that defines the item. A
//! module's `pub use` of its own descendants is its front door, not an import (`ops/mod.rs`
//! presenting `gemm::gemm` does not depend on `gemm.rs`); a `pub use` of anything else is.
//! `mod` declarations are not imports.
//!
//! `cargo test --test house -- --nocapture` prints the rooms floor by floor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Crate {
    Lib,
    Bin,
}

/// A path from a crate's root: `crate::ops::gemm` is (Lib, ["ops", "gemm"]).
type AbsPath = (Crate, Vec<String>);

#[derive(Default)]
struct Module {
    file: usize,
    children: BTreeSet<String>,
    /// Names this module defines itself (functions, types, constants, macros, modules).
    defines: BTreeSet<String>,
    /// `pub use` names and where they lead.
    reexports: HashMap<String, Vec<AbsPath>>,
    /// `pub use x::*` sources.
    globs: Vec<AbsPath>,
}

struct SourceFile {
    /// Relative to the crate folder, e.g. `src/ops/gemm.rs`.
    path: PathBuf,
    krate: Crate,
    module: Vec<String>,
    ast: syn::File,
}

struct Tree {
    files: Vec<SourceFile>,
    modules: HashMap<AbsPath, Module>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rel(path: &Path) -> PathBuf {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_path_buf()
}

impl Tree {
    fn read() -> Tree {
        let mut t = Tree {
            files: Vec::new(),
            modules: HashMap::new(),
        };
        t.add_file(Crate::Lib, Vec::new(), &src_dir().join("lib.rs"));
        t.add_file(Crate::Bin, Vec::new(), &src_dir().join("main.rs"));
        t
    }

    /// Reads a module's file and, through its `mod` declarations, every file below it.
    fn add_file(&mut self, krate: Crate, module: Vec<String>, path: &Path) {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let index = self.files.len();
        // A mod.rs, lib.rs or main.rs keeps its children beside it; x.rs keeps them in x/.
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let dir = if matches!(stem, "mod" | "lib" | "main") {
            path.parent().unwrap().to_path_buf()
        } else {
            path.with_extension("")
        };
        let items = ast.items.clone();
        self.files.push(SourceFile {
            path: rel(path),
            krate,
            module: module.clone(),
            ast,
        });
        self.add_module(krate, module, index, &items, Some(&dir));
    }

    fn add_module(
        &mut self,
        krate: Crate,
        module: Vec<String>,
        file: usize,
        items: &[syn::Item],
        dir: Option<&Path>,
    ) {
        let mut m = Module {
            file,
            ..Module::default()
        };
        for item in items {
            if let Some(name) = defined_name(item) {
                m.defines.insert(name);
            }
            if let syn::Item::Mod(decl) = item {
                let name = decl.ident.to_string();
                m.children.insert(name.clone());
                let mut child = module.clone();
                child.push(name.clone());
                assert!(
                    !decl.attrs.iter().any(|a| a.path().is_ident("path")),
                    "{}: #[path] on mod {name}: the house test follows the default layout only",
                    self.files[file].path.display()
                );
                match (&decl.content, dir) {
                    (Some((_, inner)), _) => {
                        let inner = inner.clone();
                        self.add_module(krate, child, file, &inner, None);
                    }
                    (None, Some(dir)) => {
                        let flat = dir.join(format!("{name}.rs"));
                        let nested = dir.join(&name).join("mod.rs");
                        let path = if flat.exists() { flat } else { nested };
                        self.add_file(krate, child, &path);
                    }
                    (None, None) => panic!("mod {name}; inside an inline module"),
                }
            }
        }
        self.modules.insert((krate, module), m);
    }

    /// Second pass: every module's `pub use` names, now that all modules are known.
    fn collect_reexports(&mut self) {
        let mut found: Vec<(AbsPath, String, Option<AbsPath>, bool)> = Vec::new();
        for f in &self.files {
            let mut stack = vec![(f.module.clone(), &f.ast.items)];
            while let Some((module, items)) = stack.pop() {
                for item in items.iter() {
                    match item {
                        syn::Item::Use(u) if !matches!(u.vis, syn::Visibility::Inherited) => {
                            for (path, name, glob) in flatten_use(&u.tree) {
                                let target = self.absolute(f.krate, &module, &path, None);
                                found.push((
                                    (f.krate, module.clone()),
                                    name.unwrap_or_default(),
                                    target,
                                    glob,
                                ));
                            }
                        }
                        syn::Item::Mod(syn::ItemMod {
                            ident,
                            content: Some((_, inner)),
                            ..
                        }) => {
                            let mut child = module.clone();
                            child.push(ident.to_string());
                            stack.push((child, inner));
                        }
                        _ => {}
                    }
                }
            }
        }
        for (module, name, target, glob) in found {
            let (Some(target), Some(m)) = (target, self.modules.get_mut(&module)) else {
                continue;
            };
            if glob {
                m.globs.push(target);
            } else {
                m.reexports.entry(name).or_default().push(target);
            }
        }
    }

    /// A path as written in `module` of `krate`, made absolute; None for another crate's path
    /// (std, serde, ...). `aliases`: the names the file's `use` items bound.
    fn absolute(
        &self,
        krate: Crate,
        module: &[String],
        segs: &[String],
        aliases: Option<&HashMap<String, AbsPath>>,
    ) -> Option<AbsPath> {
        let first = segs.first()?;
        let (base, rest): (AbsPath, &[String]) = match first.as_str() {
            "crate" => ((krate, Vec::new()), &segs[1..]),
            "self" => ((krate, module.to_vec()), &segs[1..]),
            "super" => {
                let mut m = module.to_vec();
                let mut i = 0;
                while segs.get(i).is_some_and(|s| s == "super") {
                    m.pop();
                    i += 1;
                }
                ((krate, m), &segs[i..])
            }
            "emrclass" if krate == Crate::Bin => ((Crate::Lib, Vec::new()), &segs[1..]),
            name if self.modules[&(krate, module.to_vec())]
                .children
                .contains(name) =>
            {
                ((krate, module.to_vec()), segs)
            }
            name => match aliases.and_then(|a| a.get(name)) {
                Some(p) => (p.clone(), &segs[1..]),
                None => return None,
            },
        };
        let mut path = base.1;
        path.extend(rest.iter().cloned());
        Some((base.0, path))
    }

    /// The file that defines what an absolute path names, and whether the name was found
    /// (rather than assumed to be the deepest module's).
    fn resolve(&self, path: &AbsPath, depth: usize) -> Option<(usize, bool)> {
        let (krate, segs) = path;
        let mut p = 0;
        while p < segs.len() && self.modules.contains_key(&(*krate, segs[..=p].to_vec())) {
            p += 1;
        }
        let m = self.modules.get(&(*krate, segs[..p].to_vec()))?;
        if p == segs.len() || depth > 8 {
            return Some((m.file, true));
        }
        let name = &segs[p];
        if let Some(targets) = m.reexports.get(name) {
            for t in targets {
                let mut full = t.1.clone();
                full.extend(segs[p + 1..].iter().cloned());
                if let Some(found) = self.resolve(&(t.0, full), depth + 1) {
                    return Some(found);
                }
            }
        }
        if m.defines.contains(name) {
            return Some((m.file, true));
        }
        for g in &m.globs {
            let mut full = g.1.clone();
            full.extend(segs[p..].iter().cloned());
            if let Some((f, true)) = self.resolve(&(g.0, full), depth + 1) {
                return Some((f, true));
            }
        }
        Some((m.file, false))
    }
}

fn defined_name(item: &syn::Item) -> Option<String> {
    Some(
        match item {
            syn::Item::Const(i) => &i.ident,
            syn::Item::Enum(i) => &i.ident,
            syn::Item::Fn(i) => &i.sig.ident,
            syn::Item::Macro(i) => i.ident.as_ref()?,
            syn::Item::Mod(i) => &i.ident,
            syn::Item::Static(i) => &i.ident,
            syn::Item::Struct(i) => &i.ident,
            syn::Item::Trait(i) => &i.ident,
            syn::Item::Type(i) => &i.ident,
            syn::Item::Union(i) => &i.ident,
            _ => return None,
        }
        .to_string(),
    )
}

/// A use tree's paths: (segments, the name it binds, glob). `use a::{self, b as c, d::*}` gives
/// (a, a), (a::b, c), (a::d, glob).
fn flatten_use(tree: &syn::UseTree) -> Vec<(Vec<String>, Option<String>, bool)> {
    fn walk(
        tree: &syn::UseTree,
        prefix: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, Option<String>, bool)>,
    ) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                walk(&p.tree, prefix, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => {
                out.push((prefix.clone(), prefix.last().cloned(), false));
            }
            syn::UseTree::Name(n) => {
                let mut p = prefix.clone();
                p.push(n.ident.to_string());
                out.push((p, Some(n.ident.to_string()), false));
            }
            syn::UseTree::Rename(r) => {
                let mut p = prefix.clone();
                if r.ident != "self" {
                    p.push(r.ident.to_string());
                }
                out.push((p, Some(r.rename.to_string()), false));
            }
            syn::UseTree::Glob(_) => out.push((prefix.clone(), None, true)),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    walk(t, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// One import: the file it leads to and the path as written (the witness in a failure).
type Imports = BTreeMap<usize, String>;

struct Collector<'a> {
    tree: &'a Tree,
    file: usize,
    module: Vec<String>,
    aliases: HashMap<String, AbsPath>,
    imports: Imports,
}

impl Collector<'_> {
    fn add(&mut self, segs: &[String], front_door: bool) {
        let krate = self.tree.files[self.file].krate;
        let Some(abs) = self
            .tree
            .absolute(krate, &self.module, segs, Some(&self.aliases))
        else {
            return;
        };
        // A module's `pub use` of its own descendants is its front door.
        if front_door
            && abs.0 == krate
            && abs.1.len() > self.module.len()
            && abs.1.starts_with(&self.module)
        {
            return;
        }
        if let Some((f, _)) = self.tree.resolve(&abs, 0) {
            if f != self.file {
                self.imports.entry(f).or_insert_with(|| segs.join("::"));
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.module.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (path, _, _) in flatten_use(&u.tree) {
            self.add(&path, public);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() >= 2 && p.leading_colon.is_none() {
            let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.add(&segs, false);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        for path in token_paths(m.tokens.clone()) {
            self.add(&path, false);
        }
        syn::visit::visit_macro(self, m);
    }
}

/// Paths of two or more segments in a macro's tokens: `a::b::c`.
fn token_paths(tokens: TokenStream) -> Vec<Vec<String>> {
    fn flat(tokens: TokenStream, out: &mut Vec<TokenTree>) {
        for t in tokens {
            match t {
                TokenTree::Group(g) => {
                    out.push(TokenTree::Punct(proc_macro2::Punct::new(
                        ';',
                        proc_macro2::Spacing::Alone,
                    )));
                    flat(g.stream(), out);
                }
                other => out.push(other),
            }
        }
    }
    let mut toks = Vec::new();
    flat(tokens, &mut toks);
    let mut paths = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let preceded_by_colons =
            i > 0 && matches!(&toks[i - 1], TokenTree::Punct(p) if p.as_char() == ':');
        if let (TokenTree::Ident(first), false) = (&toks[i], preceded_by_colons) {
            let mut segs = vec![first.to_string()];
            let mut j = i + 1;
            while j + 2 < toks.len()
                && matches!(&toks[j], TokenTree::Punct(p) if p.as_char() == ':')
                && matches!(&toks[j + 1], TokenTree::Punct(p) if p.as_char() == ':')
            {
                match &toks[j + 2] {
                    TokenTree::Ident(next) => {
                        segs.push(next.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            if segs.len() >= 2 {
                paths.push(segs);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    paths
}

/// Every file's imports.
fn import_graph(tree: &Tree) -> Vec<Imports> {
    (0..tree.files.len())
        .map(|f| {
            let file = &tree.files[f];
            // Every `use` name of the file, whatever its scope: a path may start with one.
            let mut aliases = HashMap::new();
            let mut uses = UseNames(Vec::new());
            uses.visit_file(&file.ast);
            for (module, tree_) in uses.0 {
                let mut m = file.module.clone();
                m.extend(module);
                for (path, name, glob) in flatten_use(&tree_) {
                    if let (Some(name), false) = (name, glob) {
                        if let Some(abs) = tree.absolute(file.krate, &m, &path, None) {
                            aliases.insert(name, abs);
                        }
                    }
                }
            }
            let mut c = Collector {
                tree,
                file: f,
                module: file.module.clone(),
                aliases,
                imports: Imports::new(),
            };
            c.visit_file(&file.ast);
            c.imports
        })
        .collect()
}

/// The `use` trees of a file with the inline module each sits in.
struct UseNames(Vec<(Vec<String>, syn::UseTree)>);

impl<'ast> Visit<'ast> for UseNames {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.0.push((Vec::new(), u.tree.clone()));
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            let mut inner = UseNames(Vec::new());
            for i in items {
                inner.visit_item(i);
            }
            for (mut path, tree) in inner.0 {
                path.insert(0, m.ident.to_string());
                self.0.push((path, tree));
            }
        }
    }
}

/// Strongly connected components with more than one member (Tarjan).
fn circles(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].iter() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort_unstable();
                s.out.push(group);
            }
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A file's room: its folder under src/ (`src/train/`), or itself when it sits in src/.
fn room(path: &Path) -> String {
    let inside = path.strip_prefix("src").unwrap();
    let mut parts = inside.components();
    let first = parts
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap()
        .to_string();
    if parts.next().is_some() {
        format!("src/{first}/")
    } else {
        format!("src/{first}")
    }
}

fn describe_circle(tree: &Tree, graph: &[Imports], group: &[usize]) -> String {
    let mut s = String::new();
    for &a in group {
        for (&b, witness) in &graph[a] {
            if group.contains(&b) {
                s += &format!(
                    "    {} -> {} ({witness})\n",
                    tree.files[a].path.display(),
                    tree.files[b].path.display()
                );
            }
        }
    }
    s
}

fn read_tree() -> (Tree, Vec<Imports>) {
    let mut tree = Tree::read();
    tree.collect_reexports();
    let graph = import_graph(&tree);
    (tree, graph)
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let (tree, graph) = read_tree();
    let edges: Vec<BTreeSet<usize>> = graph.iter().map(|i| i.keys().copied().collect()).collect();
    let found = circles(&edges);
    let text: String = found
        .iter()
        .map(|g| {
            format!(
                "  circle of {} files:\n{}",
                g.len(),
                describe_circle(&tree, &graph, g)
            )
        })
        .collect();
    assert!(found.is_empty(), "import circles in src/:\n{text}");
}

/// One room importing another: (importer, imported, the first file and path that do it).
type RoomImport = (String, String, String);

/// The rooms' graph and its floors, top (imports the most) first.
fn floors(tree: &Tree, graph: &[Imports]) -> (Vec<Vec<String>>, Vec<RoomImport>) {
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut witness = Vec::new();
    for (a, imports) in graph.iter().enumerate() {
        let ra = room(&tree.files[a].path);
        rooms.entry(ra.clone()).or_default();
        for (&b, w) in imports {
            let rb = room(&tree.files[b].path);
            if rb != ra && rooms.entry(ra.clone()).or_default().insert(rb.clone()) {
                witness.push((
                    ra.clone(),
                    rb,
                    format!("{} ({w})", tree.files[a].path.display()),
                ));
            }
        }
    }
    // Floor 0: rooms that import no other room; a room sits one above the highest it imports.
    let names: Vec<String> = rooms.keys().cloned().collect();
    let mut floor: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..=names.len() {
        for r in &names {
            let f = rooms[r]
                .iter()
                .map(|d| floor.get(d).map_or(0, |f| f + 1))
                .max()
                .unwrap_or(0);
            floor.insert(r.clone(), f);
        }
    }
    let top = floor.values().copied().max().unwrap_or(0);
    let mut out = vec![Vec::new(); top + 1];
    for (r, f) in floor {
        out[top - f].push(r);
    }
    (out, witness)
}

#[test]
fn rooms_stack_into_floors() {
    let (tree, graph) = read_tree();
    let (stack, witness) = floors(&tree, &graph);
    let rooms: Vec<String> = stack.iter().flatten().cloned().collect();
    let index = |r: &str| rooms.iter().position(|x| x == r).unwrap();
    let mut edges = vec![BTreeSet::new(); rooms.len()];
    for (a, b, _) in &witness {
        edges[index(a)].insert(index(b));
    }
    let found = circles(&edges);
    let text: String = found
        .iter()
        .map(|g| {
            let mut s = String::from("  circle:\n");
            for (a, b, w) in &witness {
                if g.contains(&index(a)) && g.contains(&index(b)) {
                    s += &format!("    {a} -> {b}: {w}\n");
                }
            }
            s
        })
        .collect();
    assert!(
        found.is_empty(),
        "rooms of src/ importing each other:\n{text}"
    );
    for (i, f) in stack.iter().enumerate() {
        println!("floor {}:", stack.len() - i);
        for r in f {
            let mut below: Vec<&str> = witness
                .iter()
                .filter(|(a, _, _)| a == r)
                .map(|(_, b, _)| b.as_str())
                .collect();
            below.sort_unstable();
            println!("  {r} -> {}", below.join(" "));
        }
    }
}

/// The `src/...` entries of the README's "Layout" block, in order.
fn readme_layout() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("\n## Layout")
        .expect("README has a Layout section");
    let block = &readme[start..];
    let open = block.find("```").unwrap();
    let body = &block[open + 3..];
    let body = &body[..body.find("```").unwrap()];
    body.lines()
        .filter(|l| l.starts_with("src/"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn readme_layout_names_every_room_of_src_in_floor_order() {
    let listed = readme_layout();
    let mut rooms = BTreeSet::new();
    for entry in std::fs::read_dir(src_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_string();
        if entry.file_type().unwrap().is_dir() {
            rooms.insert(format!("src/{name}/"));
        } else if name.ends_with(".rs") {
            rooms.insert(format!("src/{name}"));
        }
    }
    let missing: Vec<&String> = rooms.iter().filter(|r| !listed.contains(r)).collect();
    assert!(missing.is_empty(), "README's layout lacks {missing:?}");
    for entry in &listed {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(entry);
        assert!(
            path.exists(),
            "README's layout names {entry}, which does not exist"
        );
    }
    // Every room is listed above the rooms it imports.
    let (tree, graph) = read_tree();
    let (_, witness) = floors(&tree, &graph);
    for (a, b, w) in &witness {
        let (Some(ia), Some(ib)) = (
            listed.iter().position(|x| x == a),
            listed.iter().position(|x| x == b),
        ) else {
            continue;
        };
        assert!(
            ia < ib,
            "README's layout lists {b} above {a}, which imports it ({w}): list rooms top to bottom"
        );
    }
}

#[test]
fn main_only_dispatches_and_each_command_has_its_file() {
    let main = std::fs::read_to_string(src_dir().join("main.rs")).unwrap();
    let lines = main.lines().count();
    assert!(
        lines < 100,
        "src/main.rs has {lines} lines: it should only parse and dispatch"
    );
    let (tree, _) = read_tree();
    let commands = &tree.modules[&(Crate::Bin, vec!["cli".to_string()])];
    // Every subcommand of the CLI is a file of src/cli/ named after it.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let names: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists the commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .collect();
    assert!(
        names.len() >= 10,
        "too few commands found in --help:\n{help}"
    );
    for n in names {
        assert!(
            commands.children.contains(n),
            "`emrclass {n}` has no src/cli/{n}.rs"
        );
    }
}

#[test]
fn the_house_test_sees_a_circle() {
    // The reader itself: a two-file circle and a front door are told apart.
    let mut tree = Tree {
        files: Vec::new(),
        modules: HashMap::new(),
    };
    let parse = |s: &str| syn::parse_file(s).unwrap();
    let files = [
        (vec![], "pub mod a; pub mod b; pub mod c; pub use c::Front;"),
        (vec!["a"], "use crate::b::helper; pub fn f() { helper() }"),
        (vec!["b"], "pub fn helper() { crate::a::f() }"),
        (
            vec!["c"],
            "pub struct Front; fn g() { let _ = crate::Front; }",
        ),
    ];
    for (i, (module, text)) in files.iter().enumerate() {
        let module: Vec<String> = module.iter().map(|s: &&str| s.to_string()).collect();
        tree.files.push(SourceFile {
            path: PathBuf::from(format!("src/{i}.rs")),
            krate: Crate::Lib,
            module: module.clone(),
            ast: parse(text),
        });
        let items = tree.files[i].ast.items.clone();
        let mut m = Module {
            file: i,
            ..Module::default()
        };
        for item in &items {
            if let Some(name) = defined_name(item) {
                m.defines.insert(name.clone());
                if matches!(item, syn::Item::Mod(_)) {
                    m.children.insert(name);
                }
            }
        }
        tree.modules.insert((Crate::Lib, module), m);
    }
    tree.collect_reexports();
    let graph = import_graph(&tree);
    let edges: Vec<BTreeSet<usize>> = graph.iter().map(|i| i.keys().copied().collect()).collect();
    assert_eq!(circles(&edges), vec![vec![1, 2]]);
    // The root's `pub use c::Front` is a front door; c's `crate::Front` leads back to c itself.
    assert!(edges[0].is_empty(), "{:?}", edges[0]);
    assert!(edges[3].is_empty(), "{:?}", edges[3]);
}
