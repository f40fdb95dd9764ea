//! The example router plugins in other languages (`plugins/examples/`): Python
//! (componentize-py), JavaScript (jco with its QuickJS backend) and C (bindings generated here
//! with the `wit-bindgen-c` library, compiled by `zig cc`).
//!
//! Tools are installed on first use, each behind a stamp: componentize-py and ziglang into the
//! `.sluice/venv` that `cargo xtask setup` uses, jco into `.sluice/node` from the committed
//! `plugins/examples/js-router/package-lock.json`. An example is rebuilt only when its inputs
//! change: its sources, the WIT files and the tool versions, hashed into a hidden stamp next to
//! the output (`.example-<name>.wasm.stamp`). Outputs are written to a hidden `.partial` file
//! and renamed into place, so a Sluice watching the folder never loads half a component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::component;
use crate::setup::{self, display_rel};
use crate::util::{self, fnv1a};

/// Python tools, installed into `.sluice/venv`.
const PY_TOOLS: &[&str] = &["componentize-py==0.25.1", "ziglang==0.17.1"];

/// The `wit-bindgen-c` pinned in `xtask/Cargo.toml`: part of the C example's input hash.
const WIT_BINDGEN_C: &str = "wit-bindgen-c==0.63.0";

/// Bump to rebuild every example when the build procedure here changes.
const BUILD_VERSION: &str = "1";

/// The world every example implements.
const WORLD: &str = "router";

/// One example: its folder under `plugins/examples/` and how to build it.
struct Example {
    /// Folder name; the output is `<prefix><name>.wasm`.
    name: &'static str,
    /// Folder under `plugins/` that holds `name`.
    folder: &'static str,
    /// `example-` for the examples, `test-` for plugins only the host's tests load.
    prefix: &'static str,
    /// Tool versions that change the output (the JS tools are pinned by the folder's own
    /// `package-lock.json`, which is hashed with the sources).
    tools: &'static [&'static str],
    /// Builds the component from `source` (the example folder) into the file `output`.
    build: fn(&Inputs, &Path, &Path) -> Result<()>,
}

const EXAMPLES: &[Example] = &[
    Example {
        name: "python-router",
        folder: "examples",
        prefix: "example-",
        tools: PY_TOOLS,
        build: build_python,
    },
    Example {
        name: "python-wasi",
        folder: "testing",
        prefix: "test-",
        tools: PY_TOOLS,
        build: build_python,
    },
    Example {
        name: "js-router",
        folder: "examples",
        prefix: "example-",
        tools: &[
            "jco componentize --backend quickjs --backend-qjs-disable-async --backend-qjs-stub-wasi",
        ],
        build: build_js,
    },
    Example {
        name: "c-router",
        folder: "examples",
        prefix: "example-",
        tools: &[PY_TOOLS[1], WIT_BINDGEN_C],
        build: build_c,
    },
];

/// What every build reads.
struct Inputs {
    /// `<repo>/wit`.
    wit_dir: PathBuf,
}

/// Builds the example components into `out_dir` as `example-<name>.wasm`, skipping those
/// whose inputs did not change. Tries every example and fails at the end if any failed.
pub fn build_examples(out_dir: &Path) -> Result<()> {
    let root = util::repo_root();
    let plugins_dir = root.join("plugins");
    let inputs = Inputs {
        wit_dir: root.join("wit"),
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let wit_files = source_files(&inputs.wit_dir)?;
    if wit_files.is_empty() {
        bail!("no .wit files in {}", inputs.wit_dir.display());
    }

    let mut failed = Vec::new();
    for example in EXAMPLES {
        let source = plugins_dir.join(example.folder).join(example.name);
        let output = out_dir.join(format!("{}{}.wasm", example.prefix, example.name));
        if let Err(error) = build_example(example, &inputs, &source, &output, &wit_files) {
            eprintln!("example {}: FAILED: {error:#}", example.name);
            failed.push(example.name);
        }
    }
    if !failed.is_empty() {
        bail!("example plugins failed to build: {}", failed.join(", "));
    }
    Ok(())
}

fn build_example(
    example: &Example,
    inputs: &Inputs,
    source: &Path,
    output: &Path,
    wit_files: &[(String, Vec<u8>)],
) -> Result<()> {
    let sources = source_files(source)?;
    if sources.is_empty() {
        bail!("no sources in {}", source.display());
    }
    let mut parts: Vec<&[u8]> = vec![BUILD_VERSION.as_bytes(), example.name.as_bytes()];
    parts.extend(example.tools.iter().map(|t| t.as_bytes()));
    for (name, bytes) in sources.iter().chain(wit_files) {
        parts.push(name.as_bytes());
        parts.push(bytes);
    }
    let key = format!("{:016x}", fnv1a(&parts));
    let stamp = hidden_sibling(output, ".stamp");

    let fresh =
        output.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key.as_str());
    if fresh {
        println!(
            "example {}: {} ({}, up to date)",
            example.name,
            display_rel(output),
            file_size(output)
        );
        return Ok(());
    }

    let started = Instant::now();
    let partial = hidden_sibling(output, ".partial");
    let _ = std::fs::remove_file(&stamp);
    let built = (example.build)(inputs, source, &partial).and_then(|()| {
        let bytes =
            std::fs::read(&partial).with_context(|| format!("reading {}", partial.display()))?;
        if !component::is_component(&bytes) {
            bail!("{} is not a WebAssembly component", partial.display());
        }
        std::fs::rename(&partial, output)
            .with_context(|| format!("renaming {} to {}", partial.display(), output.display()))
    });
    if built.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    built?;
    std::fs::write(&stamp, format!("{key}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!(
        "example {}: {} ({}, built in {})",
        example.name,
        display_rel(output),
        file_size(output),
        util::human(started.elapsed())
    );
    Ok(())
}

/// `app.py` with componentize-py, from a copy of the folder under
/// `<target>/plugin-examples/python-router` (the Python inside componentize-py writes
/// `__pycache__` next to the sources it imports).
fn build_python(inputs: &Inputs, source: &Path, output: &Path) -> Result<()> {
    let python = install_py_tools()?;
    let staging = util::target_dir()?
        .join("plugin-examples")
        .join(source.file_name().unwrap_or_default())
        .join("src");
    fresh_dir(&staging)?;
    for (name, bytes) in source_files(source)? {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    util::run(
        Command::new(python.with_file_name("componentize-py"))
            .arg("-d")
            .arg(&inputs.wit_dir)
            .args(["-w", WORLD, "componentize", "app", "-p"])
            .arg(&staging)
            .arg("-o")
            .arg(output)
            .current_dir(&staging),
    )
}

/// `app.js` with jco's QuickJS backend (no WASI imports: `--backend-qjs-stub-wasi`).
fn build_js(inputs: &Inputs, source: &Path, output: &Path) -> Result<()> {
    let jco = install_node_tools(source)?;
    util::run(
        Command::new(jco)
            .args(["componentize", "app.js", "-w"])
            .arg(&inputs.wit_dir)
            .args(["-n", WORLD, "--backend", "quickjs"])
            .args([
                "--backend-qjs-disable-async",
                "--backend-qjs-stub-wasi",
                "-o",
            ])
            .arg(output)
            .current_dir(source),
    )
}

/// `policy.c` with bindings generated into `<target>/plugin-examples/c-router/gen`, compiled
/// by `zig cc` into a core module whose `component-type` section (from the generated
/// `router_component_type.o`) makes it a component without further input.
fn build_c(inputs: &Inputs, source: &Path, output: &Path) -> Result<()> {
    let python = install_py_tools()?;
    let work = util::target_dir()?.join("plugin-examples").join("c-router");
    let gen_dir = work.join("gen");
    fresh_dir(&gen_dir)?;
    let generated = generate_c_bindings(&inputs.wit_dir, &gen_dir)?;

    let core = work.join("core.wasm");
    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "ziglang",
            "cc",
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
        ])
        .args(["-O2", "-s", "-Wall", "-Werror"])
        .arg(format!("-I{}", gen_dir.display()))
        .arg(source.join("policy.c"));
    // router.c and router_component_type.o; the header is found through -I.
    command.args(
        generated
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e != "h")),
    );
    command.arg("-o").arg(&core);
    util::run(&mut command)?;

    let core_bytes = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let wasi: Vec<String> = core_imports(&core_bytes)?
        .into_iter()
        .filter(|(module, _)| module.starts_with("wasi"))
        .map(|(module, name)| format!("{module}::{name}"))
        .collect();
    if !wasi.is_empty() {
        bail!(
            "the C example's core module imports WASI ({}): libc calls that do I/O are not \
             available to plugins; remove them",
            wasi.join(", ")
        );
    }
    let component = component::encode_component(&core_bytes)
        .context("encoding the C example as a component")?;
    std::fs::write(output, component).with_context(|| format!("writing {}", output.display()))
}

/// Writes `<world>.h`, `<world>.c` and `<world>_component_type.o` for the router world into
/// `gen_dir`, as `wit-bindgen c` would; returns their paths.
fn generate_c_bindings(wit_dir: &Path, gen_dir: &Path) -> Result<Vec<PathBuf>> {
    // wit-bindgen-core's own wit-parser (the same 0.262 the component encoder uses).
    use wit_bindgen_core::wit_parser::Resolve;

    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("parsing {}", wit_dir.display()))?;
    let world = resolve.select_world(&[package], Some(WORLD))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    let mut written = Vec::new();
    for (name, bytes) in files.iter() {
        let path = gen_dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Installs componentize-py and ziglang into `.sluice/venv` unless its stamp is current;
/// returns the venv's Python.
fn install_py_tools() -> Result<PathBuf> {
    let python = setup::venv_python();
    let key = format!("{:016x}", fnv1a(&[PY_TOOLS.join("\n").as_bytes()]));
    let stamp = setup::sluice_dir().join("stamps").join("examples-python");
    let installed = python.with_file_name("componentize-py").is_file();
    if installed && read_stamp(&stamp).as_deref() == Some(key.as_str()) {
        return Ok(python);
    }
    println!(
        "examples: installing {} into {}",
        PY_TOOLS.join(" "),
        display_rel(&setup::sluice_dir().join("venv"))
    );
    std::fs::create_dir_all(setup::sluice_dir())?;
    setup::ensure_venv()?;
    setup::pip_install(PY_TOOLS)?;
    write_stamp(&stamp, &key)?;
    Ok(python)
}

/// Installs the pinned jco (and the QuickJS backend it drives) into `.sluice/node` from the
/// js-router example's `package.json` and `package-lock.json` unless its stamp is current;
/// returns the `jco` executable.
fn install_node_tools(source: &Path) -> Result<PathBuf> {
    let prefix = setup::sluice_dir().join("node");
    let jco = prefix.join("node_modules").join(".bin").join("jco");
    let manifest = std::fs::read(source.join("package.json"))
        .with_context(|| format!("reading {}/package.json", source.display()))?;
    let lock = std::fs::read(source.join("package-lock.json"))
        .with_context(|| format!("reading {}/package-lock.json", source.display()))?;
    let key = format!("{:016x}", fnv1a(&[&manifest, &lock]));
    let stamp = setup::sluice_dir().join("stamps").join("examples-node");
    if jco.is_file() && read_stamp(&stamp).as_deref() == Some(key.as_str()) {
        return Ok(jco);
    }
    if !util::on_path("npm") || !util::on_path("node") {
        bail!(
            "the JavaScript example needs Node.js 20.19 or newer with npm \
             (Debian: `apt-get install nodejs npm`)"
        );
    }
    println!(
        "examples: installing jco from {} into {}",
        display_rel(&source.join("package-lock.json")),
        display_rel(&prefix)
    );
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    std::fs::write(prefix.join("package.json"), &manifest)?;
    std::fs::write(prefix.join("package-lock.json"), &lock)?;
    util::run(
        Command::new("npm")
            .args(["ci", "--prefix"])
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--loglevel=error"]),
    )?;
    if !jco.is_file() {
        bail!("`npm ci` did not install {}", jco.display());
    }
    write_stamp(&stamp, &key)?;
    Ok(jco)
}

/// Empties `dir` (creating it if needed).
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn read_stamp(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().next()?.to_owned())
}

fn write_stamp(path: &Path, key: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, format!("{key}\n")).with_context(|| format!("writing {}", path.display()))
}

/// The files under `dir` that make up a build's input, as (relative path, contents), sorted.
/// Skips READMEs, hidden entries and what tools leave behind (`node_modules`, `__pycache__`).
fn source_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || matches!(name.as_ref(), "node_modules" | "__pycache__" | "README.md")
                || name.ends_with(".pyc")
                || name.ends_with(".wasm")
            {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&path, base, out)?;
            } else {
                let relative = path.strip_prefix(base).unwrap_or(&path);
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.push((relative.to_string_lossy().into_owned(), bytes));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// `dir/.name<suffix>` for `dir/name`: beside the output, hidden from whoever lists `*.wasm`.
fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}{suffix}"))
}

fn file_size(path: &Path) -> String {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The (module, name) pairs a core WebAssembly module imports.
fn core_imports(wasm: &[u8]) -> Result<Vec<(String, String)>> {
    let mut reader = Reader { bytes: wasm, at: 8 };
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        bail!("not a core WebAssembly module");
    }
    let mut imports = Vec::new();
    while reader.at < wasm.len() {
        let id = reader.byte()?;
        let size = reader.leb()? as usize;
        let end = reader.at + size;
        if id == 2 {
            for _ in 0..reader.leb()? {
                let module = reader.name()?;
                let name = reader.name()?;
                imports.push((module, name));
                match reader.byte()? {
                    0 => {
                        reader.leb()?;
                    }
                    1 => {
                        reader.byte()?;
                        reader.limits()?;
                    }
                    2 => reader.limits()?,
                    3 => {
                        reader.byte()?;
                        reader.byte()?;
                    }
                    4 => {
                        reader.byte()?;
                        reader.leb()?;
                    }
                    kind => bail!("unknown import kind {kind:#x}"),
                }
            }
        }
        reader.at = end;
    }
    Ok(imports)
}

/// Just enough of a WebAssembly binary reader for `core_imports`.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8> {
        let byte = *self
            .bytes
            .get(self.at)
            .context("truncated WebAssembly module")?;
        self.at += 1;
        Ok(byte)
    }

    fn leb(&mut self) -> Result<u64> {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("bad LEB128 in WebAssembly module")
    }

    fn name(&mut self) -> Result<String> {
        let len = self.leb()? as usize;
        let bytes = self
            .bytes
            .get(self.at..self.at + len)
            .context("truncated WebAssembly module")?;
        self.at += len;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn limits(&mut self) -> Result<()> {
        let flags = self.byte()?;
        self.leb()?;
        if flags & 1 != 0 {
            self.leb()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_core_imports() {
        fn name(out: &mut Vec<u8>, text: &str) {
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        // Two imports: a function of type 0, and a memory with min 1, max 2.
        let mut imports = vec![2];
        name(&mut imports, "wasi_snapshot_preview1");
        name(&mut imports, "fd_write");
        imports.extend_from_slice(&[0, 0]);
        name(&mut imports, "env");
        name(&mut imports, "memory");
        imports.extend_from_slice(&[2, 1, 1, 2]);

        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        // Type section: one `func() -> ()`.
        wasm.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        wasm.extend_from_slice(&[2, imports.len() as u8]);
        wasm.extend_from_slice(&imports);
        assert_eq!(
            core_imports(&wasm).unwrap(),
            [
                ("wasi_snapshot_preview1".to_owned(), "fd_write".to_owned()),
                ("env".to_owned(), "memory".to_owned()),
            ]
        );
        assert!(core_imports(&component::COMPONENT_MAGIC).is_err());
    }

    #[test]
    fn hidden_siblings() {
        assert_eq!(
            hidden_sibling(Path::new("/t/plugins/example-c-router.wasm"), ".stamp"),
            Path::new("/t/plugins/.example-c-router.wasm.stamp")
        );
    }
}
