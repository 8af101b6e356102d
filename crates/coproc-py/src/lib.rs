//! The `coproc` Python module (PyO3) over the Rust SDK's
//! [`coproc_client::Vcoproc`]: open a vcoproc, load firmware, shared
//! buffers that are Python buffers (`memoryview(buf)`,
//! `numpy.frombuffer(buf, dtype)` see the shared pages themselves, no
//! copy), `call`, queues, listings. Every blocking request lets go of the
//! GIL. Offloading a job takes four calls:
//!
//! ```python
//! import coproc, zlib
//! v = coproc.open("mcu0")                          # 1
//! v.load("crc32", open("crc32.elf", "rb").read())  # 2
//! buf = v.buffer_from(b"123456789")                # 3
//! words = v.call([buf.iova, 9, 1])                 # 4
//! assert words[1] == zlib.crc32(b"123456789")
//! ```
//!
//! Why PyO3 rather than a pure-Python client of the protocol: the data
//! path is shared memory and eventfds (memfds sealed and passed with
//! `SCM_RIGHTS`, ring indexes with acquire/release ordering), which
//! Python cannot express without reimplementing, unchecked, the typed
//! shared-memory API the Rust SDK already has and tests (loom, proptest);
//! one implementation serves Rust, C and Python alike.

use coproc_client::{Buffer, Queue, Session, Sqe, Vcoproc, VcoprocError};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;
use std::time::Duration;

create_exception!(coproc, CoprocError, PyException, "A coproc request failed.");
create_exception!(
    coproc,
    FaultError,
    CoprocError,
    "The vcoproc faulted; `fault` holds the record (a dict) and reset() brings it back."
);
create_exception!(
    coproc,
    StoppedError,
    CoprocError,
    "The vcoproc stopped or was destroyed."
);
create_exception!(coproc, TimeoutError, CoprocError, "No answer in time.");

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<PyObject> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any().unbind(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any().unbind(),
            _ => n
                .as_f64()
                .unwrap_or(f64::NAN)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// A listing or record as Python dicts and lists.
fn to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<PyObject> {
    let json = serde_json::to_value(v).map_err(|e| CoprocError::new_err(e.to_string()))?;
    json_to_py(py, &json)
}

fn err(py: Python<'_>, e: VcoprocError) -> PyErr {
    let msg = e.to_string();
    match e {
        VcoprocError::Faulted { fault, .. } => {
            let pe = FaultError::new_err(msg);
            let record = fault.map_or_else(|| Ok(py.None()), |f| to_py(py, &*f));
            if let Ok(record) = record {
                let _ = pe.value(py).setattr("fault", record);
            }
            pe
        }
        VcoprocError::Stopped { .. } => StoppedError::new_err(msg),
        VcoprocError::Timeout(_) => TimeoutError::new_err(msg),
        VcoprocError::Client(coproc_client::ClientError::Timeout(_)) => TimeoutError::new_err(msg),
        _ => CoprocError::new_err(msg),
    }
}

fn client_err(py: Python<'_>, e: coproc_client::ClientError) -> PyErr {
    err(py, e.into())
}

/// A connection to coprocd that can hold several vcoprocs.
#[pyclass(module = "coproc", name = "Session", frozen)]
struct PySession {
    s: Session,
}

#[pymethods]
impl PySession {
    /// Connect to `socket` (None: $COPROC_SOCKET, else the default).
    #[new]
    #[pyo3(signature = (socket=None))]
    fn new(py: Python<'_>, socket: Option<PathBuf>) -> PyResult<PySession> {
        let s = py
            .allow_threads(|| match &socket {
                Some(p) => Session::connect_to(p),
                None => Session::connect(),
            })
            .map_err(|e| err(py, e))?;
        Ok(PySession { s })
    }

    /// Open a vcoproc on the pcoproc `coproc` in this session.
    fn open(&self, py: Python<'_>, coproc: &str) -> PyResult<PyVcoproc> {
        let v = py
            .allow_threads(|| self.s.open(coproc))
            .map_err(|e| err(py, e))?;
        Ok(PyVcoproc::new(v))
    }

    /// Who the daemon thinks we are (uid, gid, pid, admin).
    fn identity(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, &self.s.identity())
    }

    /// Pcoprocs this domain may use, as dicts.
    fn list_coprocs(&self, py: Python<'_>) -> PyResult<PyObject> {
        let l = py
            .allow_threads(|| self.s.list_coprocs())
            .map_err(|e| err(py, e))?;
        to_py(py, &l)
    }

    /// Vcoprocs this session may see, as dicts.
    fn list_vcoprocs(&self, py: Python<'_>) -> PyResult<PyObject> {
        let l = py
            .allow_threads(|| self.s.list_vcoprocs())
            .map_err(|e| err(py, e))?;
        to_py(py, &l)
    }

    /// Domains this session may see, as dicts.
    fn list_domains(&self, py: Python<'_>) -> PyResult<PyObject> {
        let l = py
            .allow_threads(|| self.s.list_domains())
            .map_err(|e| err(py, e))?;
        to_py(py, &l)
    }

    /// Faults this session may see, as dicts.
    fn list_faults(&self, py: Python<'_>) -> PyResult<PyObject> {
        let l = py
            .allow_threads(|| self.s.list_faults())
            .map_err(|e| err(py, e))?;
        to_py(py, &l)
    }
}

/// A vcoproc; destroyed by close(), at the end of a `with` block, or when
/// garbage-collected.
#[pyclass(module = "coproc", name = "Vcoproc")]
struct PyVcoproc {
    v: Option<Vcoproc>,
}

impl PyVcoproc {
    fn new(v: Vcoproc) -> PyVcoproc {
        PyVcoproc { v: Some(v) }
    }

    fn get(&self) -> PyResult<&Vcoproc> {
        self.v
            .as_ref()
            .ok_or_else(|| CoprocError::new_err("the vcoproc is closed"))
    }
}

/// The bytes of any object with the buffer protocol (bytes, bytearray,
/// memoryview, a numpy array), copied.
fn bytes_of(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = data.py();
    let view = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((data,))?;
    let b = view.call_method0("tobytes")?;
    Ok(b.downcast::<PyBytes>()?.as_bytes().to_vec())
}

#[pymethods]
impl PyVcoproc {
    /// Its id.
    #[getter]
    fn id(&self) -> PyResult<u32> {
        Ok(self.get()?.id())
    }

    /// The pcoproc it is on.
    #[getter]
    fn coproc(&self) -> PyResult<String> {
        Ok(self.get()?.coproc().name.clone())
    }

    /// Its pcoproc's device class (`mcu`, `vulkan`).
    #[getter]
    fn device_class(&self) -> PyResult<String> {
        Ok(self.get()?.coproc().class.clone())
    }

    /// Seconds call() waits.
    #[getter]
    fn timeout(&self) -> PyResult<f64> {
        Ok(self.get()?.timeout().as_secs_f64())
    }

    #[setter]
    fn set_timeout(&self, seconds: f64) -> PyResult<()> {
        let t = Duration::try_from_secs_f64(seconds)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.get()?.set_timeout(t);
        Ok(())
    }

    /// Load a firmware image (bytes) and start it.
    fn load(&self, py: Python<'_>, label: &str, image: &Bound<'_, PyAny>) -> PyResult<()> {
        let image = bytes_of(image)?;
        let v = self.get()?;
        py.allow_threads(|| v.load(label, &image))
            .map_err(|e| err(py, e))
    }

    /// Write the request words to the mailbox, ring, wait for the answer
    /// and return the mailbox-out words (a list of ints). Raises
    /// FaultError if the vcoproc faults, TimeoutError after `timeout`
    /// seconds (default: the vcoproc's timeout).
    #[pyo3(signature = (request, timeout=None))]
    fn call(&self, py: Python<'_>, request: Vec<u32>, timeout: Option<f64>) -> PyResult<Vec<u32>> {
        let v = self.get()?;
        let t = match timeout {
            Some(s) => {
                Duration::try_from_secs_f64(s).map_err(|e| PyValueError::new_err(e.to_string()))?
            }
            None => v.timeout(),
        };
        let r = py
            .allow_threads(|| v.call_timeout(&request, t))
            .map_err(|e| err(py, e))?;
        Ok(r.words)
    }

    /// `size` bytes (whole pages) of zeroed shared memory, mapped
    /// read/write; a Python buffer (memoryview, numpy.frombuffer).
    fn buffer(&self, py: Python<'_>, size: u64) -> PyResult<PyBuffer> {
        let v = self.get()?;
        let b = py
            .allow_threads(|| v.buffer(size))
            .map_err(|e| err(py, e))?;
        Ok(PyBuffer { b })
    }

    /// A buffer holding a copy of `data` (bytes, bytearray, memoryview,
    /// a numpy array: anything with the buffer protocol).
    fn buffer_from(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<PyBuffer> {
        let data = bytes_of(data)?;
        let v = self.get()?;
        let b = py
            .allow_threads(|| v.buffer_from(&data))
            .map_err(|e| err(py, e))?;
        Ok(PyBuffer { b })
    }

    /// An event-driven queue of `entries` entries (a power of two).
    fn queue(&self, py: Python<'_>, entries: u32) -> PyResult<PyQueue> {
        let v = self.get()?;
        let q = py
            .allow_threads(|| v.queue(entries))
            .map_err(|e| err(py, e))?;
        Ok(PyQueue { q })
    }

    /// A queue attached to this `vulkan` vcoproc's command processor, for
    /// Queue.run_job.
    fn gpu_queue(&self, py: Python<'_>, entries: u32) -> PyResult<PyQueue> {
        let v = self.get()?;
        let q = py
            .allow_threads(|| v.gpu_queue(entries))
            .map_err(|e| err(py, e))?;
        Ok(PyQueue { q })
    }

    /// Tell the firmware where `queue` is (the example firmware's
    /// convention: mailbox words 0 and 1, then a doorbell).
    fn announce_queue(&self, py: Python<'_>, queue: PyRef<'_, PyQueue>) -> PyResult<()> {
        let v = self.get()?;
        let q = &queue.q;
        py.allow_threads(|| v.announce_queue(q))
            .map_err(|e| err(py, e))
    }

    /// Its state: "runnable", "waiting", "faulted", ...
    fn state(&self, py: Python<'_>) -> PyResult<String> {
        let v = self.get()?;
        py.allow_threads(|| v.state()).map_err(|e| err(py, e))
    }

    /// Its state and counters, as a dict (`last_fault` included).
    fn info(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v = self.get()?;
        let i = py.allow_threads(|| v.info()).map_err(|e| err(py, e))?;
        to_py(py, &i)
    }

    /// Reset it and start it again (after a fault).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let v = self.get()?;
        py.allow_threads(|| v.reset()).map_err(|e| err(py, e))
    }

    /// Its session (to open more vcoprocs in it, or list).
    fn session(&self) -> PyResult<PySession> {
        Ok(PySession {
            s: self.get()?.session().clone(),
        })
    }

    /// Destroy it now (later calls raise CoprocError).
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.v.take() {
            Some(v) => py.allow_threads(|| v.destroy()).map_err(|e| err(py, e)),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// Memory shared with a vcoproc, mapped at `iova`; unmapped from the
/// vcoproc when garbage-collected (never while a memoryview or numpy
/// array of it lives: they hold it). It is a Python buffer: writable,
/// bytes (format "B"). The device may write it concurrently: read results
/// after call() or a completion says they are there.
#[pyclass(module = "coproc", name = "Buffer", frozen)]
struct PyBuffer {
    b: Buffer,
}

#[pymethods]
impl PyBuffer {
    /// Where the vcoproc sees its first byte.
    #[getter]
    fn iova(&self) -> u64 {
        self.b.iova()
    }

    fn __len__(&self) -> usize {
        usize::try_from(self.b.len()).unwrap_or(usize::MAX)
    }

    /// `size` bytes from `offset`, copied.
    #[pyo3(signature = (offset=0, size=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        size: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let size = size
            .unwrap_or_else(|| usize::try_from(self.b.len().saturating_sub(offset)).unwrap_or(0));
        let v = self.b.read_vec(offset, size).map_err(|e| err(py, e))?;
        Ok(PyBytes::new(py, &v))
    }

    /// Copy `data` (anything with the buffer protocol) in at `offset`.
    #[pyo3(signature = (data, offset=0))]
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        let data = bytes_of(data)?;
        self.b.write(offset, &data).map_err(|e| err(py, e))
    }

    /// The buffer protocol: the shared pages themselves, writable.
    ///
    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (addr, len) = {
            let b = &slf.get().b;
            (b.mem().addr(), b.len())
        };
        let len = ffi::Py_ssize_t::try_from(len)
            .map_err(|_| PyValueError::new_err("buffer too large"))?;
        let addr = usize::try_from(addr).map_err(|_| PyValueError::new_err("address"))?;
        // SAFETY: `view` is the Py_buffer Python asked us to fill; the
        // memory at `addr` is `len` bytes mapped read/write for as long as
        // the Buffer lives, and PyBuffer_FillInfo takes a reference to it
        // (`view->obj`), so it outlives every export. No Rust reference to
        // the shared memory is made: Python gets its address.
        let r = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), addr as *mut c_void, len, 0, flags)
        };
        if r == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// Nothing to release: the reference PyBuffer_FillInfo took keeps the
    /// memory.
    #[allow(clippy::unused_self)] // the buffer protocol's signature
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// A queue: submissions and completions in shared memory, no socket
/// message per request.
#[pyclass(module = "coproc", name = "Queue")]
struct PyQueue {
    q: Queue,
}

fn sqe(opcode: u32, tag: u32, args: &[u32]) -> PyResult<Sqe> {
    if args.len() > 14 {
        return Err(PyValueError::new_err("at most 14 arguments"));
    }
    let mut a = [0u32; 14];
    a[..args.len()].copy_from_slice(args);
    Ok(Sqe {
        opcode,
        tag,
        args: a,
    })
}

#[pymethods]
impl PyQueue {
    /// Entries per ring.
    #[getter]
    fn entries(&self) -> u32 {
        self.q.entries()
    }

    /// Where the vcoproc sees the ring memory.
    #[getter]
    fn iova(&self) -> u64 {
        self.q.iova()
    }

    /// Put a submission in the ring (publish with ring()); False if full.
    #[pyo3(signature = (opcode, tag, args=Vec::new()))]
    fn submit(&mut self, opcode: u32, tag: u32, args: Vec<u32>) -> PyResult<bool> {
        Ok(self.q.submit(&sqe(opcode, tag, &args)?))
    }

    /// Ring the doorbell.
    fn ring(&self, py: Python<'_>) -> PyResult<()> {
        self.q.ring().map_err(|e| client_err(py, e))
    }

    /// Wait up to `timeout` seconds for a completion; True if one may be
    /// ready.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = Duration::try_from_secs_f64(timeout)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let q = &self.q;
        py.allow_threads(|| q.wait(t))
            .map_err(|e| client_err(py, e))
    }

    /// The next completion as (tag, status, [14 results]), or None.
    fn complete(&mut self) -> Option<(u32, u32, Vec<u32>)> {
        self.q
            .complete()
            .map(|c| (c.tag, c.status, c.result.to_vec()))
    }

    /// Submit, ring and wait for the completion with this tag:
    /// (tag, status, [14 results]).
    #[pyo3(signature = (opcode, tag, args=Vec::new(), timeout=30.0))]
    fn round_trip(
        &mut self,
        py: Python<'_>,
        opcode: u32,
        tag: u32,
        args: Vec<u32>,
        timeout: f64,
    ) -> PyResult<(u32, u32, Vec<u32>)> {
        let s = sqe(opcode, tag, &args)?;
        let t = Duration::try_from_secs_f64(timeout)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let q = &mut self.q;
        let c = py
            .allow_threads(|| q.round_trip(&s, t))
            .map_err(|e| client_err(py, e))?;
        Ok((c.tag, c.status, c.result.to_vec()))
    }

    /// Run a GPU job (a list of command tuples, see the module's `job`)
    /// on a queue from Vcoproc.gpu_queue and wait for it: returns the GPU
    /// nanoseconds it took. A refused command raises CoprocError with the
    /// device's status.
    #[pyo3(signature = (commands, timeout=60.0))]
    fn run_job(
        &mut self,
        py: Python<'_>,
        commands: &Bound<'_, PyList>,
        timeout: f64,
    ) -> PyResult<u64> {
        let j = job(commands, 1)?;
        let t = Duration::try_from_secs_f64(timeout)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let q = &mut self.q;
        let done = py
            .allow_threads(|| {
                let signal = q.submit_job(&j)?;
                q.wait_job(signal, t)
            })
            .map_err(|e| client_err(py, e))?;
        Ok(done.gpu_ns)
    }
}

/// A GPU job from its commands, as tuples: ("bind", slot, iova, len),
/// ("push_u32", byte offset, [words]), ("push_f32", byte offset, [floats]),
/// ("dispatch", pipeline, (x, y, z)), ("copy", src, dst, len),
/// ("fill", dst, len, value), ("barrier",); the signal is added.
fn job(commands: &Bound<'_, PyList>, value: u32) -> PyResult<coproc_client::Job> {
    let mut j = coproc_client::Job::new();
    for c in commands.iter() {
        let name: String = c.get_item(0)?.extract()?;
        let arg = |i: usize| c.get_item(i);
        j = match name.as_str() {
            "bind" => j.bind(arg(1)?.extract()?, arg(2)?.extract()?, arg(3)?.extract()?),
            "push_u32" => j.push_u32(arg(1)?.extract()?, &arg(2)?.extract::<Vec<u32>>()?),
            "push_f32" => j.push_f32(arg(1)?.extract()?, &arg(2)?.extract::<Vec<f32>>()?),
            "dispatch" => {
                let (x, y, z): (u32, u32, u32) = arg(2)?.extract()?;
                j.dispatch(arg(1)?.extract()?, [x, y, z])
            }
            "copy" => j.copy(arg(1)?.extract()?, arg(2)?.extract()?, arg(3)?.extract()?),
            "fill" => j.fill(arg(1)?.extract()?, arg(2)?.extract()?, arg(3)?.extract()?),
            "barrier" => j.barrier(),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown GPU command {other:?}"
                )))
            }
        };
    }
    Ok(j.signal(value))
}

/// Connect (`socket`: None for $COPROC_SOCKET or the default) and open a
/// vcoproc on `coproc` in a session of its own.
#[pyfunction]
#[pyo3(signature = (coproc, socket=None))]
fn open(py: Python<'_>, coproc: &str, socket: Option<PathBuf>) -> PyResult<PyVcoproc> {
    let v = py
        .allow_threads(|| match &socket {
            Some(p) => Vcoproc::open_at(p, coproc),
            None => Vcoproc::open(coproc),
        })
        .map_err(|e| err(py, e))?;
    Ok(PyVcoproc::new(v))
}

/// Pcoprocs this domain may use (a session for the question).
#[pyfunction]
#[pyo3(signature = (socket=None))]
fn list_coprocs(py: Python<'_>, socket: Option<PathBuf>) -> PyResult<PyObject> {
    PySession::new(py, socket)?.list_coprocs(py)
}

/// The `coproc` module.
#[pymodule]
#[pyo3(name = "coproc")]
fn coproc_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PySession>()?;
    m.add_class::<PyVcoproc>()?;
    m.add_class::<PyBuffer>()?;
    m.add_class::<PyQueue>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(list_coprocs, m)?)?;
    m.add("CoprocError", py.get_type::<CoprocError>())?;
    m.add("FaultError", py.get_type::<FaultError>())?;
    m.add("StoppedError", py.get_type::<StoppedError>())?;
    m.add("TimeoutError", py.get_type::<TimeoutError>())?;
    Ok(())
}
