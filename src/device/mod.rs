//! One device API, three implementations: `Cuda` (cudarc driver + NVRTC), `Simt` (the same
//! kernels compiled for the host and run by the SIMT simulator) and `Sizing` (no memory, no
//! kernels: it only counts the bytes a run would allocate, which is how `emrclass plan` sizes a
//! run with the engine's own allocation code). Kernels are launched by name with arguments
//! checked against the signature parsed from their source, on every device.

mod block_races;
mod cuda;
pub mod failure;
mod kernels;
mod memory;
pub mod nvrtc;
mod simt;

use std::marker::PhantomData;
use std::sync::Arc;

pub use cuda::CudaInfo;
pub use kernels::{
    kernel_info, KernelFile, KernelInfo, LaunchConfig, ParamInfo, ParamKind, COMMON_HEADER,
    KERNELS, KERNEL_FILES,
};
pub use memory::{parse_bytes, MemoryCounter, Role};
pub use simt::{threads_from_env as simt_threads_from_env, Schedule};

use crate::error::{Error, Result};

/// Element types a device buffer may hold.
pub trait Elem: bytemuck::Pod + Send + Sync + 'static {
    const PARAM: ParamKind;
    const NAME: &'static str;
}
impl Elem for f32 {
    const PARAM: ParamKind = ParamKind::PtrF32;
    const NAME: &'static str = "f32";
}
impl Elem for half::f16 {
    const PARAM: ParamKind = ParamKind::PtrF16;
    const NAME: &'static str = "f16";
}
impl Elem for i32 {
    const PARAM: ParamKind = ParamKind::PtrI32;
    const NAME: &'static str = "i32";
}
impl Elem for u32 {
    const PARAM: ParamKind = ParamKind::PtrU32;
    const NAME: &'static str = "u32";
}
impl Elem for u8 {
    const PARAM: ParamKind = ParamKind::PtrU8;
    const NAME: &'static str = "u8";
}
impl Elem for u64 {
    const PARAM: ParamKind = ParamKind::PtrU64;
    const NAME: &'static str = "u64";
}

/// One kernel argument. Buffers pass their device address; scalars pass by value.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64, ParamKind),
    /// A null pointer for an optional buffer parameter (e.g. GEMM's bias).
    Null,
    F32(f32),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
}

impl<T: Elem> From<&Buffer<T>> for Arg {
    fn from(b: &Buffer<T>) -> Arg {
        Arg::Ptr(b.addr, T::PARAM)
    }
}
impl<T: Elem> From<&mut Buffer<T>> for Arg {
    fn from(b: &mut Buffer<T>) -> Arg {
        Arg::Ptr(b.addr, T::PARAM)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}

impl Arg {
    /// The 8-byte slot whose address goes into the kernel-parameter array. Scalars sit in its
    /// low bytes, which is where a little-endian read of a narrower type finds them.
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(a, _) => a,
            Arg::Null => 0,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::U32(v) => v as u64,
            Arg::I64(v) => v as u64,
            Arg::U64(v) => v,
        }
    }
}

/// Which device to use, as the CLI's `--device` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when a usable GPU and NVRTC exist, else the simulator.
    Auto,
    Cuda,
    Simt,
}

enum Backend {
    Cuda(cuda::CudaBackend),
    Simt(simt::SimtBackend),
    /// Hands out addresses of nothing and runs no kernel; reads return zeros.
    Sizing(std::sync::atomic::AtomicU64),
}

struct Inner {
    backend: Backend,
    memory: MemoryCounter,
    /// The role of new allocations (`Role as u8`), set by `Device::role`.
    role: std::sync::atomic::AtomicU8,
    /// Whether backward adds parameter gradients into what they hold (micro-batches) instead
    /// of overwriting them; set by `Device::accumulate_gradients`.
    accumulate: std::sync::atomic::AtomicBool,
    /// Kernel launches so far: tests assert that recurrences launch O(1) times, not O(L).
    launches: std::sync::atomic::AtomicU64,
    /// Calls that make the host wait for the device: copies to or from host memory (cudarc's
    /// synchronous memcpy) and `synchronize`. `bench step` reports them per step.
    host_syncs: std::sync::atomic::AtomicU64,
    /// The SM count kernel choices assume (`Device::multiprocessors`).
    multiprocessors: std::sync::atomic::AtomicUsize,
}

/// A device: cheap to clone, shared by every buffer allocated on it.
#[derive(Clone)]
pub struct Device(Arc<Inner>);

/// The shared-memory limit per block on the target card (sm_61); the simulator enforces it too.
pub const MAX_SHARED_BYTES_PER_BLOCK: u32 = 48 * 1024;

impl Device {
    /// The simulator, running blocks' threads in the given order.
    pub fn simt(schedule: Schedule) -> Device {
        Device::with_backend(Backend::Simt(simt::SimtBackend::new(schedule)), usize::MAX)
    }

    /// The first CUDA GPU — in a data-parallel world, GPU LOCAL_RANK (one per process on a
    /// machine, as torchrun's scripts choose) — or an error that says which library or device
    /// is missing.
    pub fn cuda() -> Result<Device> {
        let local_rank = std::env::var("WORLD_SIZE")
            .ok()
            .and_then(|_| std::env::var("LOCAL_RANK").ok()?.trim().parse::<i32>().ok())
            .unwrap_or(0);
        Ok(Device::with_backend(
            Backend::Cuda(cuda::CudaBackend::new(local_rank)?),
            usize::MAX,
        ))
    }

    /// A device that only counts bytes: allocations get addresses of no memory, launches are
    /// checked and skipped, reads give zeros. Runs the engine's own code to measure its peak.
    pub fn sizing() -> Device {
        Device::with_backend(
            Backend::Sizing(std::sync::atomic::AtomicU64::new(1 << 20)),
            usize::MAX,
        )
    }

    /// Tags the allocations made until the guard drops with `role` (then the previous role is
    /// current again).
    #[must_use = "the mode lasts only while the guard lives"]
    pub fn role(&self, role: Role) -> RoleGuard {
        let previous = self.current_role();
        self.0
            .role
            .store(role as u8, std::sync::atomic::Ordering::SeqCst);
        RoleGuard {
            device: self.clone(),
            previous,
        }
    }

    /// Until the guard drops, backward adds each parameter gradient into the gradient buffer
    /// instead of overwriting it (`ops::write_gradient`): micro-batches sum in place.
    #[must_use = "the mode lasts only while the guard lives"]
    pub fn accumulate_gradients(&self) -> AccumulateGuard {
        let previous = self
            .0
            .accumulate
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        AccumulateGuard {
            device: self.clone(),
            previous,
        }
    }

    pub fn accumulating_gradients(&self) -> bool {
        self.0.accumulate.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn current_role(&self) -> Role {
        Role::ALL[self.0.role.load(std::sync::atomic::Ordering::SeqCst) as usize]
    }

    pub fn is_sizing(&self) -> bool {
        matches!(self.0.backend, Backend::Sizing(_))
    }

    /// `auto` tries CUDA and falls back to the simulator; the second value says why when it did.
    pub fn open(choice: DeviceChoice) -> Result<(Device, Option<String>)> {
        match choice {
            DeviceChoice::Simt => Ok((Device::simt(Schedule::Forward), None)),
            DeviceChoice::Cuda => Ok((Device::cuda()?, None)),
            DeviceChoice::Auto => match Device::cuda() {
                Ok(d) => Ok((d, None)),
                Err(e) => Ok((Device::simt(Schedule::Forward), Some(e.to_string()))),
            },
        }
    }

    fn with_backend(backend: Backend, budget: usize) -> Device {
        let multiprocessors = match &backend {
            Backend::Cuda(c) => c.info.multiprocessors.max(1) as usize,
            Backend::Simt(_) | Backend::Sizing(_) => 6,
        };
        Device(Arc::new(Inner {
            backend,
            memory: MemoryCounter::new(budget),
            role: std::sync::atomic::AtomicU8::new(Role::Scratch as u8),
            accumulate: std::sync::atomic::AtomicBool::new(false),
            launches: Default::default(),
            host_syncs: Default::default(),
            multiprocessors: multiprocessors.into(),
        }))
    }

    /// The simulator or the sizing device standing in for a card with `n` SMs, so that kernel
    /// choices by shape (GEMM tiles, split-K and its workspace) are that card's. No effect on
    /// CUDA: a GPU's count is its own. Like `with_budget`, it changes the device every clone
    /// shares.
    pub fn with_multiprocessors(self, n: usize) -> Device {
        if !self.is_cuda() {
            self.0
                .multiprocessors
                .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
        }
        self
    }

    /// The same device with a byte budget that allocations may not pass.
    pub fn with_budget(self, budget: usize) -> Device {
        self.0.memory.set_budget(budget);
        self
    }

    pub fn memory(&self) -> &MemoryCounter {
        &self.0.memory
    }

    /// Kernel launches made on this device so far.
    pub fn launch_count(&self) -> u64 {
        self.0.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the host has waited for the device so far (host copies and `synchronize`).
    pub fn host_sync_count(&self) -> u64 {
        self.0.host_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_host_sync(&self) {
        self.0
            .host_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.0.backend, Backend::Cuda(_))
    }

    /// On CUDA, the libraries in use: "driver /usr/lib/…/libcuda.so.1 (CUDA 12.8); NVRTC 12.9
    /// (/…/libnvrtc.so.12)".
    pub fn libraries(&self) -> Option<String> {
        match &self.0.backend {
            Backend::Cuda(c) => Some(format!(
                "driver {} (CUDA {}); {}",
                c.info.driver_library,
                c.info.driver_version,
                nvrtc::describe().unwrap_or_else(|e| e.to_string())
            )),
            _ => None,
        }
    }

    /// A short description: "simt (schedule: reverse)" or "cuda: NVIDIA GeForce GTX 1050 Ti (sm_61)".
    pub fn describe(&self) -> String {
        match &self.0.backend {
            Backend::Cuda(c) => format!(
                "cuda: {} (sm_{}{})",
                c.info.name, c.info.major, c.info.minor
            ),
            Backend::Simt(s) => format!(
                "simt (schedule: {}, {} thread{}{})",
                s.schedule(),
                s.threads(),
                if s.threads() == 1 { "" } else { "s" },
                if s.block_check() {
                    ", block-race check"
                } else {
                    ""
                }
            ),
            Backend::Sizing(_) => "sizing (counts bytes, runs no kernels)".to_string(),
        }
    }

    /// Streaming multiprocessors: the GPU's own count on CUDA; on the simulator and the sizing
    /// device, the GTX 1050 Ti's 6 unless `with_multiprocessors` says otherwise, so that
    /// shape-dependent kernel choices (GEMM tiles, split-K) are the ones the target card makes,
    /// and the tests exercise them.
    pub fn multiprocessors(&self) -> usize {
        self.0
            .multiprocessors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn cuda_info(&self) -> Option<&CudaInfo> {
        match &self.0.backend {
            Backend::Cuda(c) => Some(&c.info),
            Backend::Simt(_) | Backend::Sizing(_) => None,
        }
    }

    /// Changes the simulator's thread order (no effect on CUDA).
    pub fn set_schedule(&self, schedule: Schedule) {
        if let Backend::Simt(s) = &self.0.backend {
            s.set_schedule(schedule);
        }
    }

    /// Spreads the simulator's blocks over `threads` OS threads (no effect on CUDA). The
    /// results are the same bits on any number.
    pub fn set_simt_threads(&self, threads: usize) {
        if let Backend::Simt(s) = &self.0.backend {
            s.set_threads(threads);
        }
    }

    /// The simulator's threads (1 on other devices).
    pub fn simt_threads(&self) -> usize {
        match &self.0.backend {
            Backend::Simt(s) => s.threads(),
            _ => 1,
        }
    }

    /// Runs every simulator launch under the block-race check (device/block_races.rs): an
    /// error when two blocks write the same byte or a block reads another's output. Slow.
    pub fn set_block_check(&self, on: bool) {
        if let Backend::Simt(s) = &self.0.backend {
            s.set_block_check(on);
        }
    }

    /// Starts hashing every byte the host copies back from the simulator, so two runs can be
    /// compared bit for bit (`read_digest`).
    pub fn start_read_digest(&self) {
        if let Backend::Simt(s) = &self.0.backend {
            s.start_read_digest();
        }
    }

    /// The hash of every byte copied to the host since `start_read_digest`.
    pub fn read_digest(&self) -> Option<u64> {
        match &self.0.backend {
            Backend::Simt(s) => s.read_digest(),
            _ => None,
        }
    }

    /// Free and total device memory in bytes (for the simulator: the budget's view).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        match &self.0.backend {
            Backend::Cuda(c) => c.mem_info(),
            Backend::Simt(_) | Backend::Sizing(_) => {
                let m = &self.0.memory;
                Ok((m.budget().saturating_sub(m.live()), m.budget()))
            }
        }
    }

    /// An uninitialised buffer (on the simulator it holds NaN-like 0xFF bytes, so reading
    /// what was never written is noticed).
    pub fn alloc<T: Elem>(&self, len: usize, what: &str) -> Result<Buffer<T>> {
        let bytes = len * std::mem::size_of::<T>();
        let role = self.current_role();
        self.0.memory.reserve(bytes, role, what)?;
        let addr = match &self.0.backend {
            Backend::Cuda(c) => c.alloc(bytes, what, self.0.memory.live() - bytes),
            Backend::Simt(s) => s.alloc(bytes, what),
            Backend::Sizing(next) => Ok(next.fetch_add(
                bytes.next_multiple_of(256) as u64 + 256,
                std::sync::atomic::Ordering::SeqCst,
            )),
        };
        match addr {
            Ok(addr) => Ok(Buffer {
                addr,
                len,
                role,
                device: self.clone(),
                _elem: PhantomData,
            }),
            Err(e) => {
                self.0.memory.release(bytes, role);
                Err(e)
            }
        }
    }

    pub fn upload<T: Elem>(&self, data: &[T], what: &str) -> Result<Buffer<T>> {
        let mut b = self.alloc(data.len(), what)?;
        b.copy_from_host(data)?;
        Ok(b)
    }

    /// A buffer of zeros, set on the device (no host copy, no host wait).
    pub fn zeros<T: Elem>(&self, len: usize, what: &str) -> Result<Buffer<T>> {
        let mut b = self.alloc(len, what)?;
        b.fill_zero()?;
        Ok(b)
    }

    /// A trainable parameter's values (counted as parameters).
    pub fn parameter(&self, values: &[f32], what: &str) -> Result<Buffer<f32>> {
        let _role = self.role(Role::Parameters);
        self.upload(values, what)
    }

    /// A parameter's gradient, zeroed (counted as gradients).
    pub fn gradient(&self, len: usize, what: &str) -> Result<Buffer<f32>> {
        let _role = self.role(Role::Gradients);
        self.zeros(len, what)
    }

    /// Launches `kernel` after checking the arguments against its parsed signature.
    pub fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let info = kernel_info(kernel)?;
        check_launch(info, &cfg, args)?;
        self.0
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut params: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        match &self.0.backend {
            Backend::Cuda(c) => c.launch(info, &cfg, &mut params),
            Backend::Simt(s) => s.launch(info, &cfg, &mut params),
            Backend::Sizing(_) => Ok(()),
        }
    }

    /// Waits for all launched work to finish.
    pub fn synchronize(&self) -> Result<()> {
        self.count_host_sync();
        match &self.0.backend {
            Backend::Cuda(c) => c.synchronize(),
            Backend::Simt(_) | Backend::Sizing(_) => Ok(()),
        }
    }

    /// Runs `work` and returns its device time in milliseconds: CUDA events on a GPU, the
    /// wall clock on the simulator.
    pub fn time_ms(&self, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        match &self.0.backend {
            Backend::Cuda(c) => c.time_ms(work),
            Backend::Simt(_) | Backend::Sizing(_) => {
                let t = std::time::Instant::now();
                work()?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            }
        }
    }
}

fn check_launch(info: &KernelInfo, cfg: &LaunchConfig, args: &[Arg]) -> Result<()> {
    let bad = |message: String| {
        Err(Error::BadLaunch {
            kernel: info.name.to_string(),
            message,
        })
    };
    if args.len() != info.params.len() {
        return bad(format!(
            "takes {} arguments, {} given",
            info.params.len(),
            args.len()
        ));
    }
    for (i, (arg, p)) in args.iter().zip(info.params).enumerate() {
        let ok = match (arg, p.kind) {
            (Arg::Ptr(_, k), want) => *k == want,
            (Arg::Null, k) => matches!(
                k,
                ParamKind::PtrF32
                    | ParamKind::PtrF16
                    | ParamKind::PtrI32
                    | ParamKind::PtrU32
                    | ParamKind::PtrU8
                    | ParamKind::PtrU64
            ),
            (Arg::F32(_), ParamKind::F32)
            | (Arg::I32(_), ParamKind::I32)
            | (Arg::U32(_), ParamKind::U32)
            | (Arg::I64(_), ParamKind::I64)
            | (Arg::U64(_), ParamKind::U64) => true,
            _ => false,
        };
        if !ok {
            return bad(format!(
                "argument {i} (`{}`) must be {:?}, got {:?}",
                p.name, p.kind, arg
            ));
        }
    }
    let threads = cfg.block.0 as u64 * cfg.block.1 as u64 * cfg.block.2 as u64;
    if threads == 0 || threads > 1024 {
        return bad(format!(
            "block {:?} has {threads} threads; 1..=1024 allowed",
            cfg.block
        ));
    }
    if cfg.grid.0 == 0
        || cfg.grid.1 == 0
        || cfg.grid.2 == 0
        || cfg.grid.1 > 65535
        || cfg.grid.2 > 65535
    {
        return bad(format!("grid {:?} is empty or too large", cfg.grid));
    }
    if cfg.shared_bytes > MAX_SHARED_BYTES_PER_BLOCK {
        return bad(format!(
            "{} bytes of dynamic shared memory; at most {MAX_SHARED_BYTES_PER_BLOCK} per block on sm_61",
            cfg.shared_bytes
        ));
    }
    Ok(())
}

/// Puts the previous allocation role back when dropped (see `Device::role`).
pub struct RoleGuard {
    device: Device,
    previous: Role,
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        self.device
            .0
            .role
            .store(self.previous as u8, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Ends gradient accumulation (or restores the mode before it) when dropped.
pub struct AccumulateGuard {
    device: Device,
    previous: bool,
}

impl Drop for AccumulateGuard {
    fn drop(&mut self) {
        self.device
            .0
            .accumulate
            .store(self.previous, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A typed buffer in device memory (host memory on the simulator). Freed on drop.
pub struct Buffer<T: Elem> {
    addr: u64,
    len: usize,
    role: Role,
    device: Device,
    _elem: PhantomData<T>,
}

impl<T: Elem> Buffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An argument pointing `offset` elements into this buffer.
    /// The buffer's device address, for tables that multi-tensor kernels read addresses from.
    pub fn device_address(&self) -> u64 {
        self.addr
    }

    pub fn arg_at(&self, offset: usize) -> Arg {
        assert!(
            offset <= self.len,
            "offset {offset} past a buffer of {}",
            self.len
        );
        Arg::Ptr(
            self.addr + (offset * std::mem::size_of::<T>()) as u64,
            T::PARAM,
        )
    }

    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len {
            return Err(Error::Invalid(format!(
                "copy of {} {} elements into a buffer of {}",
                data.len(),
                T::NAME,
                self.len
            )));
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.device.count_host_sync();
        match &self.device.0.backend {
            Backend::Cuda(c) => c.copy_to_device(self.addr, bytes),
            Backend::Sizing(_) => Ok(()),
            Backend::Simt(_) => {
                // SAFETY: addr points to a live allocation of exactly self.bytes() bytes that
                // this buffer owns, and `bytes` has the same length.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr as *mut u8, bytes.len())
                };
                Ok(())
            }
        }
    }

    /// Sets every element to zero bits, on the device.
    pub fn fill_zero(&mut self) -> Result<()> {
        match &self.device.0.backend {
            Backend::Cuda(c) => c.fill_zero(self.addr, self.bytes()),
            Backend::Sizing(_) => Ok(()),
            Backend::Simt(_) => {
                // SAFETY: addr points to a live allocation of exactly self.bytes() bytes that
                // this buffer owns (borrowed mutably).
                unsafe { std::ptr::write_bytes(self.addr as *mut u8, 0, self.bytes()) };
                Ok(())
            }
        }
    }

    /// A new buffer on the same device holding a copy of this one.
    pub fn duplicate(&self) -> Result<Buffer<T>> {
        let mut out = self.device.alloc::<T>(self.len, "copy")?;
        out.copy_from(self)?;
        Ok(out)
    }

    /// Copies another buffer of the same length and device into this one.
    pub fn copy_from(&mut self, src: &Buffer<T>) -> Result<()> {
        if src.len != self.len || !Arc::ptr_eq(&src.device.0, &self.device.0) {
            return Err(Error::Invalid(format!(
                "copy of {} {} elements into a buffer of {} (or across devices)",
                src.len,
                T::NAME,
                self.len
            )));
        }
        match &self.device.0.backend {
            Backend::Cuda(c) => c.copy_device(self.addr, src.addr, self.bytes()),
            Backend::Sizing(_) => Ok(()),
            Backend::Simt(_) => {
                // SAFETY: both are live allocations of self.bytes() bytes (same length, checked
                // above), distinct since this one is borrowed mutably.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.addr as *const u8,
                        self.addr as *mut u8,
                        self.bytes(),
                    )
                };
                Ok(())
            }
        }
    }

    pub fn to_host(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.device.count_host_sync();
        match &self.device.0.backend {
            Backend::Cuda(c) => c.copy_to_host(bytes, self.addr)?,
            Backend::Sizing(_) => {}
            Backend::Simt(s) => {
                // SAFETY: as in copy_from_host; the simulator has finished every launch
                // before it returns, so nothing writes the buffer concurrently.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.addr as *const u8,
                        bytes.as_mut_ptr(),
                        bytes.len(),
                    )
                };
                s.note_read(bytes);
            }
        }
        Ok(out)
    }
}

impl<T: Elem> Drop for Buffer<T> {
    fn drop(&mut self) {
        let bytes = self.bytes();
        match &self.device.0.backend {
            Backend::Cuda(c) => c.free(self.addr),
            Backend::Simt(s) => s.free(self.addr, bytes),
            Backend::Sizing(_) => {}
        }
        self.device.0.memory.release(bytes, self.role);
    }
}
