//! The CUDA backend: cudarc's driver API, dynamically loaded, with kernels compiled by NVRTC
//! for the device's own compute capability, cached on disk and loaded lazily per file.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

use cudarc::driver::{result, sys, DriverError};

use super::failure::{self, During};
use super::kernels::{KernelInfo, LaunchConfig, KERNEL_FILES};
use super::nvrtc;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct CudaInfo {
    pub name: String,
    pub major: i32,
    pub minor: i32,
    pub multiprocessors: i32,
    pub total_bytes: usize,
    /// Peak SM clock and memory clock in kHz, and the memory bus width: for the roofline.
    pub clock_khz: i32,
    pub memory_clock_khz: i32,
    pub bus_width_bits: i32,
    /// The driver library the process loaded and the CUDA version it supports, e.g. "12.8".
    pub driver_library: String,
    pub driver_version: String,
}

impl CudaInfo {
    /// FP32 lanes per SM by architecture (CUDA C++ Programming Guide, arithmetic throughput).
    pub fn fp32_cores_per_sm(&self) -> i32 {
        match (self.major, self.minor) {
            (6, 0) | (7, _) | (8, 0) => 64,
            _ => 128,
        }
    }

    /// Peak fp32 FLOP/s: SMs x lanes x 2 (an FMA) x clock.
    pub fn peak_flops(&self) -> f64 {
        self.multiprocessors as f64
            * self.fp32_cores_per_sm() as f64
            * 2.0
            * self.clock_khz as f64
            * 1e3
    }

    /// Peak DRAM bytes/s: double data rate x bus width.
    pub fn peak_bandwidth(&self) -> f64 {
        2.0 * self.memory_clock_khz as f64 * 1e3 * self.bus_width_bits as f64 / 8.0
    }
}

pub(super) struct CudaBackend {
    pub info: CudaInfo,
    context: sys::CUcontext,
    /// Loaded modules by kernel file name, and functions by kernel name.
    modules: Mutex<HashMap<&'static str, sys::CUmodule>>,
    functions: Mutex<HashMap<&'static str, usize>>,
    /// Allocations come from the device's stream-ordered memory pool (cuMemAllocAsync), which
    /// keeps freed memory for reuse: a training step's temporaries then cost no cuMemAlloc and
    /// no device-wide synchronisation in cuMemFree. False where the device has no pools.
    pooled: bool,
    /// The most recent launch: a fault surfaces at a later call, and names this one.
    last_launch: Mutex<Option<(&'static str, LaunchConfig)>>,
}

/// A launch in words: kernel, grid, block and dynamic shared memory.
fn describe_launch(kernel: &str, cfg: &LaunchConfig) -> String {
    format!(
        "`{kernel}` (grid {:?}, block {:?}, {} bytes of dynamic shared memory)",
        cfg.grid, cfg.block, cfg.shared_bytes
    )
}

// SAFETY: the raw context and module handles are process-wide driver objects; every use
// binds the context to the calling thread first, and the maps are behind mutexes.
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

/// The file of a shared library this process has loaded whose name starts with `stem`, read
/// from /proc/self/maps: which copy the dynamic linker actually gave us, for the record.
pub fn loaded_library_path(stem: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            std::path::Path::new(path)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(stem))
        })
        .map(str::to_string)
}

fn missing_driver() -> Error {
    Error::MissingLibrary {
        library: "the CUDA driver (libcuda.so.1)".into(),
        how: "install the NVIDIA driver for your GPU (it ships libcuda.so.1), or use --device simt to run the \
              kernels on the CPU simulator"
            .into(),
    }
}

/// Sets the default pool's release threshold to "never": memory freed to the pool stays
/// reserved for the process, as PyTorch's caching allocator does.
///
/// # Safety
/// `dev` is a valid device handle and a context on it is current.
unsafe fn keep_freed_memory_in_pool(dev: sys::CUdevice) -> Result<()> {
    let mut pool = std::mem::MaybeUninit::uninit();
    sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), dev).result()?;
    let mut threshold = u64::MAX;
    sys::cuMemPoolSetAttribute(
        pool.assume_init(),
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        &mut threshold as *mut u64 as *mut c_void,
    )
    .result()?;
    Ok(())
}

impl CudaBackend {
    pub fn new(ordinal: i32) -> Result<Self> {
        // cudarc panics when a library is missing: check first and say which one.
        // SAFETY: is_culib_present only tries to dlopen the candidate library names.
        if !unsafe { sys::is_culib_present() } {
            return Err(missing_driver());
        }
        nvrtc::ensure_loaded()?;
        result::init().map_err(|e| {
            Error::Cuda(format!("cuInit failed ({e:?}): is an NVIDIA GPU visible?"))
        })?;
        let count = result::device::get_count()?;
        // One GPU per rank already (Slurm's CUDA_VISIBLE_DEVICES per task): it is that one.
        let ordinal = if count == 1 { 0 } else { ordinal };
        if count <= ordinal {
            return Err(Error::Cuda(format!(
                "no CUDA device {ordinal}: {count} found{}",
                if ordinal > 0 {
                    " (a data-parallel rank uses GPU LOCAL_RANK: start at most one process per GPU)"
                } else {
                    ""
                }
            )));
        }
        let dev = result::device::get(ordinal)?;
        // SAFETY: dev comes from device::get; the attributes and total_mem are plain queries,
        // and the primary context is retained for the process's lifetime.
        unsafe {
            let driver_version = {
                let mut v = 0;
                sys::cuDriverGetVersion(&mut v).result()?;
                (v / 1000, (v % 1000) / 10)
            };
            let attr = |a| result::device::get_attribute(dev, a);
            let info = CudaInfo {
                name: result::device::get_name(dev)?,
                major: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                minor: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                multiprocessors: attr(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                )?,
                total_bytes: result::device::total_mem(dev)?,
                clock_khz: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
                memory_clock_khz: attr(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE,
                )?,
                bus_width_bits: attr(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH,
                )?,
                driver_library: loaded_library_path("libcuda.so")
                    .unwrap_or_else(|| "libcuda (path unknown)".into()),
                driver_version: format!("{}.{}", driver_version.0, driver_version.1),
            };
            failure::check_driver(
                driver_version,
                &info.driver_library,
                nvrtc::version()?,
                &nvrtc::describe()?,
            )?;
            let context = result::primary_ctx::retain(dev)?;
            result::ctx::set_current(context)?;
            let pooled = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)?
                == 1
                && keep_freed_memory_in_pool(dev).is_ok();
            Ok(CudaBackend {
                info,
                context,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                pooled,
                last_launch: Mutex::new(None),
            })
        }
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: the context was retained in new() and is never released.
        unsafe { result::ctx::set_current(self.context)? };
        Ok(())
    }

    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.info.major, self.info.minor)
    }

    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        Ok(result::mem_get_info()?)
    }

    /// The last launch, in words.
    fn last_launch(&self) -> Option<String> {
        let last = *self.last_launch.lock().unwrap_or_else(|e| e.into_inner());
        last.map(|(kernel, cfg)| describe_launch(kernel, &cfg))
    }

    /// A driver error of `what` (a copy, a synchronisation) as the user's error: a kernel fault
    /// reported here names the last launch.
    fn fail(&self, what: &'static str) -> impl FnOnce(DriverError) -> Error + '_ {
        move |e| failure::from_driver(e, During::Other { what }, self.last_launch().as_deref())
    }

    /// `bytes` of device memory for `what`; `live`: what the engine holds besides (for the
    /// out-of-memory message).
    pub fn alloc(&self, bytes: usize, what: &str, live: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: an allocation in the bound context, freed in free(). A pooled one is ordered
        // on the legacy null stream, which every launch and copy of the engine uses, so it is
        // valid for all later work.
        let out = unsafe {
            if self.pooled {
                result::malloc_async(std::ptr::null_mut(), bytes.max(1))
            } else {
                result::malloc_sync(bytes.max(1))
            }
        };
        out.map_err(|e| {
            let during = During::Alloc {
                what,
                request: bytes,
                live,
                memory: result::mem_get_info().ok(),
            };
            failure::from_driver(e, during, self.last_launch().as_deref())
        })
    }

    pub fn free(&self, addr: u64) {
        if self.bind().is_ok() {
            // SAFETY: addr came from alloc() and is freed once, from Buffer's Drop; a pooled
            // free is ordered after all work already launched on the null stream.
            let _ = unsafe {
                if self.pooled {
                    result::free_async(addr, std::ptr::null_mut())
                } else {
                    result::free_sync(addr)
                }
            };
        }
    }

    /// Copies `bytes` from one device allocation to another, ordered with the launches.
    pub fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both are live allocations of at least `bytes` (Buffer checks lengths).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, std::ptr::null_mut()) }
            .map_err(self.fail("a device-to-device copy"))?;
        Ok(())
    }

    /// Zeroes `bytes` bytes at `dst`, ordered with the launches: no host wait.
    pub fn fill_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst is a live allocation of at least `bytes` bytes (Buffer checks lengths).
        unsafe { result::memset_d8_async(dst, 0, bytes, std::ptr::null_mut()) }
            .map_err(self.fail("zeroing a buffer"))?;
        Ok(())
    }

    pub fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst is a live allocation of at least src.len() bytes (Buffer checks lengths).
        unsafe { result::memcpy_htod_sync(dst, src) }
            .map_err(self.fail("a host-to-device copy"))?;
        Ok(())
    }

    pub fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: src is a live allocation of at least dst.len() bytes; the copy synchronises.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(self.fail("a device-to-host copy"))?;
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        result::ctx::synchronize().map_err(self.fail("waiting for the GPU"))
    }

    /// The function handle for a kernel, compiling and loading its file on first use.
    fn function(&self, info: &KernelInfo) -> Result<sys::CUfunction> {
        if let Some(&f) = self.functions.lock().unwrap().get(info.name) {
            return Ok(f as sys::CUfunction);
        }
        let mut modules = self.modules.lock().unwrap();
        let module = match modules.get(info.file) {
            Some(&m) => m,
            None => {
                let file = KERNEL_FILES
                    .iter()
                    .find(|f| f.name == info.file)
                    .expect("every kernel's file is embedded");
                let arch = self.arch();
                let cubin = nvrtc::cached_cubin(file, &arch)?;
                // SAFETY: cubin is a complete image for this device's architecture; the
                // driver copies it during the call.
                let m = unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
                    .map_err(|e| {
                        let (nvrtc, nvrtc_version) = (
                            nvrtc::describe().unwrap_or_default(),
                            nvrtc::version().unwrap_or((0, 0)),
                        );
                        let driver = format!(
                            "CUDA {}, {}",
                            self.info.driver_version, self.info.driver_library
                        );
                        let during = During::LoadModule {
                            file: file.name,
                            arch: &arch,
                            nvrtc: &nvrtc,
                            nvrtc_version,
                            driver: &driver,
                        };
                        failure::from_driver(e, during, self.last_launch().as_deref())
                    })?;
                modules.insert(info.file, m);
                m
            }
        };
        // SAFETY: module is loaded and never unloaded; the name is a kernel in that file.
        let f = unsafe { result::module::get_function(module, CString::new(info.name).unwrap())? };
        self.functions.lock().unwrap().insert(info.name, f as usize);
        Ok(f)
    }

    pub fn launch(
        &self,
        info: &KernelInfo,
        cfg: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        let f = self.function(info)?;
        *self.last_launch.lock().unwrap_or_else(|e| e.into_inner()) = Some((info.name, *cfg));
        // SAFETY: params holds one pointer per kernel parameter (checked against the parsed
        // signature) to 8-byte slots that live until the call returns; the driver copies the
        // values at launch. Buffer addresses are live device allocations.
        unsafe {
            result::launch_kernel(
                f,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                std::ptr::null_mut(),
                params,
            )
        }
        .map_err(|e| {
            let launch = describe_launch(info.name, cfg);
            failure::from_driver(e, During::Launch { launch: &launch }, None)
        })
    }

    /// Times `work` with a pair of events created with timing enabled (CU_EVENT_DEFAULT).
    pub fn time_ms(&self, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.bind()?;
        let start = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)?;
        let stop = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)?;
        // SAFETY: both events are live until destroyed below; the null stream is the one
        // every launch uses.
        unsafe {
            result::event::record(start, std::ptr::null_mut())?;
            let outcome = work();
            result::event::record(stop, std::ptr::null_mut())?;
            result::event::synchronize(stop)?;
            let ms = result::event::elapsed(start, stop)?;
            result::event::destroy(start)?;
            result::event::destroy(stop)?;
            outcome?;
            Ok(ms as f64)
        }
    }
}
