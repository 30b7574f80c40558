//! One CUDA device: context, stream, the kernel module chosen by compute capability, cuBLAS.
//!
//! Every cudarc call is guarded: [`driver_present`] is checked before the first one, because
//! cudarc's dynamic loader panics when libcuda is absent; likewise cuBLAS is only created when
//! libcublas can be loaded.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, sys,
};
use cudarc::nvrtc::Ptx;

use super::error::CudaError;
use super::kernels::KERNELS;

/// Whether libcuda can be loaded on this machine (no driver call is made).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA function is called.
    unsafe { sys::is_culib_present() }
}

/// Whether libcublas can be loaded on this machine.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Number of CUDA devices, or why there are none usable.
pub fn device_count() -> Result<i32, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    CudaContext::device_count().map_err(CudaError::driver("counting CUDA devices"))
}

/// A CUDA device ready to run the engine's kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: Option<CudaBlas>,
    /// cuBLAS's workspace, set explicitly so that a GEMM inside a CUDA graph capture never needs
    /// to allocate.
    _blas_workspace: Option<CudaSlice<u8>>,
    name: String,
    cc: (i32, i32),
    /// Streaming multiprocessors.
    sm_count: usize,
    sync_each_launch: bool,
    /// A CUDA graph capture is under way on the stream: no synchronization may happen.
    capturing: std::cell::Cell<bool>,
    /// Programmatic dependent launch inside captured graphs (see [`Gpu::set_pdl`]).
    pdl: bool,
}

/// Bytes of the cuBLAS workspace (NVIDIA's recommendation for Hopper).
const CUBLAS_WORKSPACE: usize = 32 << 20;

impl Gpu {
    /// Opens device `ordinal`: context, one stream, the PTX module for its compute capability
    /// (every kernel of [`KERNELS`] looked up), and cuBLAS when its library is present.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        let count = device_count()?;
        if count == 0 {
            return Err(CudaError::NoDevice(count));
        }
        if ordinal >= count as usize {
            return Err(CudaError::BadOrdinal { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("creating a context"))?;
        let name = ctx
            .name()
            .map_err(CudaError::driver("reading the device name"))?;
        let cc = ctx
            .compute_capability()
            .map_err(CudaError::driver("reading the compute capability"))?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(CudaError::driver("reading the multiprocessor count"))?
            .max(1) as usize;
        let ptx =
            crate::kernels::ptx_for(cc.0, cc.1).ok_or_else(|| CudaError::UnsupportedDevice {
                name: name.clone(),
                major: cc.0,
                minor: cc.1,
            })?;
        // One stream carries all work, in order; cudarc's per-buffer event tracking (which
        // exists to order work across streams) is turned off before anything is allocated.
        // SAFETY: every buffer is used on `stream` only, so no cross-stream ordering is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(CudaError::driver("creating a stream"))?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(CudaError::driver("loading the kernel module (PTX JIT)"))?;
        let mut funcs = HashMap::new();
        for &k in KERNELS {
            let f = module
                .load_function(k)
                .map_err(|source| CudaError::Kernel { kernel: k, source })?;
            funcs.insert(k, f);
        }
        let (blas, blas_workspace) = if cublas_present() {
            let blas = CudaBlas::new(stream.clone()).map_err(|source| CudaError::Cublas {
                op: "create handle",
                source,
            })?;
            // SAFETY: uninitialized scratch that only cuBLAS uses.
            let ws = unsafe { stream.alloc::<u8>(CUBLAS_WORKSPACE) }
                .map_err(CudaError::driver("allocating the cuBLAS workspace"))?;
            {
                let (ptr, _sync) = cudarc::driver::DevicePtr::device_ptr(&ws, &stream);
                // SAFETY: the handle is live; the workspace is a device allocation of the stated
                // size on the handle's stream, kept alive as long as the handle (both in `Gpu`).
                unsafe {
                    cudarc::cublas::sys::cublasSetWorkspace_v2(
                        *blas.handle(),
                        ptr as *mut std::ffi::c_void,
                        CUBLAS_WORKSPACE,
                    )
                }
                .result()
                .map_err(|source| CudaError::Cublas {
                    op: "set workspace",
                    source,
                })?;
            }
            (Some(blas), Some(ws))
        } else {
            (None, None)
        };
        Ok(Gpu {
            ctx,
            stream,
            _module: module,
            funcs,
            blas,
            _blas_workspace: blas_workspace,
            name,
            cc,
            sm_count,
            sync_each_launch: std::env::var_os("HOST_CUDA_SYNC").is_some(),
            capturing: std::cell::Cell::new(false),
            pdl: false,
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// The number of streaming multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// cuBLAS on this device's stream, or [`CudaError::NoCublas`].
    pub fn blas(&self) -> Result<&CudaBlas, CudaError> {
        self.blas.as_ref().ok_or(CudaError::NoCublas)
    }

    /// When on, every launch is followed by a stream synchronization, so an asynchronous fault
    /// is reported with the name of the kernel that caused it (also on with env `HOST_CUDA_SYNC`).
    pub fn set_sync_each_launch(&mut self, on: bool) {
        self.sync_each_launch = on;
    }

    /// The loaded kernel `name`.
    pub(crate) fn func(&self, name: &'static str) -> Result<&CudaFunction, CudaError> {
        self.funcs.get(name).ok_or(CudaError::Shape {
            kernel: name,
            problem: "no such kernel in the module".into(),
        })
    }

    /// Called after each launch: reports a pending error under the kernel's name.
    pub(crate) fn after_launch(&self, kernel: &'static str) -> Result<(), CudaError> {
        if self.sync_each_launch && !self.capturing.get() {
            self.stream
                .synchronize()
                .map_err(|source| CudaError::Kernel { kernel, source })?;
        }
        Ok(())
    }

    /// Programmatic dependent launch (the sm_90 module): while a CUDA graph is captured, the
    /// kernels that wait for their predecessor themselves
    /// ([`super::kernels::waits_for_previous`]) are launched with the programmatic-serialization
    /// attribute, so each is scheduled while the previous one runs and issues its weight loads
    /// before it waits (`gpu::pdl_trigger` / `gpu::pdl_wait` in `kernels-gpu`). No effect with
    /// the sm_80 module, which has no `griddepcontrol`.
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on
            && crate::kernels::ptx_for(self.cc.0, self.cc.1)
                .is_some_and(|p| std::ptr::eq(p, crate::kernels::PTX_SM90));
    }

    /// Whether kernel `name` is launched with programmatic serialization now.
    pub(crate) fn pdl_launch(&self, name: &str) -> bool {
        self.pdl && self.capturing.get() && super::kernels::waits_for_previous(name)
    }

    /// Launches `f` with the programmatic-stream-serialization attribute (`cuLaunchKernelEx`).
    ///
    /// # Safety
    /// `params` points to one value per kernel parameter, in order, each of the parameter's type
    /// (a device address, `u32` or `f32`, in the low bytes of a `u64` slot), and the buffers they
    /// address fit what the kernel indexes; the kernel calls `gpu::pdl_wait` before touching
    /// memory another kernel writes.
    pub(crate) unsafe fn launch_pdl(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), cudarc::driver::DriverError> {
        // SAFETY: a zeroed attribute is a valid value of the C struct; its fields are set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        self.ctx.bind_to_thread()?;
        // SAFETY: the config and attribute outlive the call; params per the caller's contract.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// Starts recording what is queued on the stream into a CUDA graph instead of running it
    /// (sync-each-launch mode pauses meanwhile: a capture cannot synchronize). Always pair with
    /// [`Gpu::end_capture`], also when queuing failed.
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(CudaError::driver("starting a CUDA graph capture"))?;
        self.capturing.set(true);
        Ok(())
    }

    /// Ends the capture [`Gpu::begin_capture`] started: the graph, instantiated and uploaded.
    pub fn end_capture(&self) -> Result<cudarc::driver::CudaGraph, CudaError> {
        self.capturing.set(false);
        let g = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(CudaError::driver("ending a CUDA graph capture"))?
            .ok_or_else(|| CudaError::Driver {
                what: "ending a CUDA graph capture: nothing was captured".into(),
                source: cudarc::driver::DriverError(
                    sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                ),
            })?;
        g.upload()
            .map_err(CudaError::driver("uploading a CUDA graph"))?;
        Ok(g)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(CudaError::driver(
            "synchronizing the stream (a kernel failed; run with HOST_CUDA_SYNC=1 to name it)",
        ))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx
            .mem_get_info()
            .map_err(CudaError::driver("reading free device memory"))
    }

    /// Fails with [`CudaError::OutOfMemory`] unless `needed` bytes are free.
    pub fn ensure_free(&self, needed: usize, what: &str) -> Result<(), CudaError> {
        let (free, total) = self.mem_info()?;
        if needed > free {
            return Err(CudaError::OutOfMemory {
                what: what.into(),
                needed,
                free,
                total,
            });
        }
        Ok(())
    }

    /// Allocates `n` elements (contents undefined) for `what`; an allocation failure is reported
    /// as [`CudaError::OutOfMemory`] with the sizes.
    pub fn alloc<T: DeviceRepr>(&self, n: usize, what: &str) -> Result<CudaSlice<T>, CudaError> {
        let bytes = n.max(1) * std::mem::size_of::<T>();
        // SAFETY: the memory is uninitialized; every user writes before reading (kernels write
        // their outputs; the tests poison them first).
        match unsafe { self.stream.alloc::<T>(n.max(1)) } {
            Ok(s) => Ok(s),
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.mem_info().unwrap_or((0, 0));
                Err(CudaError::OutOfMemory {
                    what: what.into(),
                    needed: bytes,
                    free,
                    total,
                })
            }
            Err(source) => Err(CudaError::Driver {
                what: format!("allocating {bytes} bytes for {what}"),
                source,
            }),
        }
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>, CudaError> {
        let mut d = self.alloc::<T>(data.len(), what)?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut d)
                .map_err(CudaError::driver(format!("copying {what} to the device")))?;
        }
        Ok(d)
    }

    /// A page-locked host buffer of `n` u32 that the device copies results into while the host
    /// goes on ([`Gpu::download_to_slot`]).
    pub fn host_slot(&self, n: usize, what: &str) -> Result<HostSlot, CudaError> {
        // SAFETY: the memory is zeroed below before anything reads it; flags 0: cached (not
        // write-combined) memory, which the host reads.
        let mut buf = unsafe { self.ctx.alloc_pinned_with_flags::<u32>(n.max(1), 0) }.map_err(
            CudaError::driver(format!("allocating {what} (page-locked)")),
        )?;
        buf.as_mut_slice()
            .map_err(CudaError::driver(format!("initializing {what}")))?
            .fill(0);
        let done = self
            .ctx
            .new_event(None)
            .map_err(CudaError::driver(format!("creating the event of {what}")))?;
        Ok(HostSlot { buf, done })
    }

    /// Queues a copy of `src` into `slot` and returns at once; [`HostSlot::wait`] waits for the
    /// copy (and for everything queued before it on the stream).
    pub fn download_to_slot<S: cudarc::driver::DevicePtr<u32>>(
        &self,
        src: &S,
        slot: &mut HostSlot,
    ) -> Result<(), CudaError> {
        self.stream
            .memcpy_dtoh(src, &mut slot.buf)
            .map_err(CudaError::driver("queuing a copy of results to the host"))?;
        // Event tracking is off (one stream), so the copy's completion is recorded here.
        slot.done
            .record(&self.stream)
            .map_err(CudaError::driver("recording a copy to the host"))
    }

    /// Copies a device buffer (or view) back to the host.
    pub fn download<T: DeviceRepr + Default + Clone, S: cudarc::driver::DevicePtr<T>>(
        &self,
        src: &S,
    ) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); src.len()];
        self.stream
            .memcpy_dtoh(src, &mut out)
            .map_err(CudaError::driver("copying results to the host"))?;
        self.synchronize()?;
        Ok(out)
    }
}

/// Page-locked host memory that the device copies u32 results into ([`Gpu::download_to_slot`])
/// and the event recorded after the copy.
pub struct HostSlot {
    buf: PinnedHostSlice<u32>,
    done: cudarc::driver::CudaEvent,
}

impl HostSlot {
    /// The values of the last copy queued into this slot (waits for it).
    pub fn wait(&self) -> Result<&[u32], CudaError> {
        self.done
            .synchronize()
            .map_err(CudaError::driver("waiting for a copy to the host"))?;
        self.buf
            .as_slice()
            .map_err(CudaError::driver("reading a copy to the host"))
    }
}

/// A kernel argument as the `u64` slot of a programmatic launch ([`Gpu::launch_pdl`]): a
/// buffer's device address, or a scalar's bits in the low bytes.
pub trait KernelArg {
    fn bits(self, gpu: &Gpu) -> u64;
}

impl<T> KernelArg for &cudarc::driver::CudaView<'_, T> {
    fn bits(self, gpu: &Gpu) -> u64 {
        cudarc::driver::DevicePtr::device_ptr(self, gpu.stream()).0
    }
}

impl<T> KernelArg for &mut cudarc::driver::CudaViewMut<'_, T> {
    fn bits(self, gpu: &Gpu) -> u64 {
        cudarc::driver::DevicePtrMut::device_ptr_mut(self, gpu.stream()).0
    }
}

impl<T> KernelArg for &CudaSlice<T> {
    fn bits(self, gpu: &Gpu) -> u64 {
        cudarc::driver::DevicePtr::device_ptr(self, gpu.stream()).0
    }
}

impl<T> KernelArg for &mut CudaSlice<T> {
    fn bits(self, gpu: &Gpu) -> u64 {
        cudarc::driver::DevicePtrMut::device_ptr_mut(self, gpu.stream()).0
    }
}

impl KernelArg for &u32 {
    fn bits(self, _: &Gpu) -> u64 {
        *self as u64
    }
}

impl KernelArg for &f32 {
    fn bits(self, _: &Gpu) -> u64 {
        self.to_bits() as u64
    }
}

impl KernelArg for &u64 {
    fn bits(self, _: &Gpu) -> u64 {
        *self
    }
}

/// Launches a kernel of the module: `launch!(gpu, "name", cfg, arg, arg, …)`. Each argument is
/// anything cudarc can push (`&CudaView`, `&mut CudaViewMut`, `&u32`, …), in the kernel's
/// parameter order. A launch error is reported with the kernel's name.
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let gpu: &$crate::cuda::Gpu = $gpu;
        let name: &'static str = $name;
        let f = gpu.func(name)?;
        if gpu.pdl_launch(name) {
            let mut vals: Vec<u64> =
                vec![$( $crate::cuda::device::KernelArg::bits($arg, gpu) ),*];
            let mut ptrs: Vec<*mut std::ffi::c_void> = vals
                .iter_mut()
                .map(|v| v as *mut u64 as *mut std::ffi::c_void)
                .collect();
            // SAFETY: one u64 slot per parameter, in the kernel's order (each launcher mirrors
            // its kernel's signature), holding the device address or the scalar's bits in its
            // low bytes (little-endian); the launcher checked every buffer against the shapes
            // the kernel will index; the kernel is one of those that wait for their predecessor.
            unsafe { gpu.launch_pdl(f, $cfg, &mut ptrs) }
                .map_err(|source| $crate::cuda::CudaError::Kernel { kernel: name, source })?;
        } else {
            let mut b = gpu.stream().launch_builder(f);
            $( b.arg($arg); )*
            // SAFETY: the arguments were pushed in the order and with the types of the kernel's
            // parameters (each launcher mirrors its kernel's signature), and the launcher checked
            // every buffer against the shapes the kernel will index (see its module header).
            unsafe { b.launch($cfg) }
                .map_err(|source| $crate::cuda::CudaError::Kernel { kernel: name, source })?;
        }
        gpu.after_launch(name)?;
    }};
}
pub(crate) use launch;

#[cfg(test)]
mod tests {
    use super::*;

    /// Without libcuda, opening a device is a typed error that tells the user what to do, never a
    /// panic inside cudarc; with a driver it is whatever the machine has.
    #[test]
    fn no_driver_is_a_clear_error_not_a_panic() {
        match Gpu::new(0) {
            Err(CudaError::NoDriver) => {
                assert!(!driver_present());
                let msg = CudaError::NoDriver.to_string();
                assert!(msg.contains("--device cpu"), "{msg}");
                assert!(matches!(device_count(), Err(CudaError::NoDriver)));
            }
            Err(e) => assert!(driver_present(), "driver absent but got {e}"),
            Ok(g) => assert!(driver_present() && !g.name().is_empty()),
        }
    }
}
