//! GPU commands: what a domain writes into a `vulkan` vcoproc's submission
//! ring, and the statuses of the completions the device posts back.
//!
//! A queue entry is 64 bytes (see [`crate::queue`]): an opcode, a tag and 14
//! argument words. The device decodes every entry with [`Command::decode`],
//! which refuses anything malformed before the entry is checked against the
//! vcoproc's pipelines and iova map; the SDK builds entries with
//! [`Command::encode`], so both sides share one definition.
//!
//! Commands carry state the way a command buffer does: `bind` sets the
//! buffer of one binding (bind group below [`MAX_GROUPS`], binding number
//! below [`MAX_BINDING`]), `push` sets words of the push constants, and a
//! `dispatch` runs a pipeline with the current slots and constants. A
//! `signal` ends a job: the device posts one completion for it when every
//! command before it has finished. A refused command gets a completion of
//! its own with an error status, the rest of its job is skipped, and the
//! job's `signal` completes with [`Status::Aborted`].
//!
//! Addresses are iovas of the vcoproc (32 bits on this class); lengths are
//! bytes.

use crate::queue::Sqe;
use thiserror::Error;

/// Mailbox-in word the device reads the queue's iova from.
pub const MBOX_QUEUE: usize = 0;

/// Mailbox-out words a `vulkan` vcoproc keeps up to date.
pub mod mbox_out {
    /// Completions posted.
    pub const POSTED: usize = 0;
    /// Times the ring's submission tail was garbage.
    pub const GARBAGE: usize = 1;
    /// 1 if the queue named by mailbox-in word 0 was refused.
    pub const BAD_QUEUE: usize = 2;
    /// Commands executed on the GPU (dispatch, copy, fill).
    pub const EXECUTED: usize = 3;
    /// Commands refused.
    pub const REFUSED: usize = 4;
}

/// Bind groups (descriptor sets) a `bind` can name: groups `0..MAX_GROUPS`
/// (the device may allow fewer; it refuses the shader at load then).
pub const MAX_GROUPS: u32 = 8;
/// Binding numbers a `bind` can name in each group: `0..MAX_BINDING`.
pub const MAX_BINDING: u32 = 32;
/// Push constant words (128 bytes, the minimum every Vulkan device has).
pub const PUSH_WORDS: u32 = 32;
/// Most push words one `push` command carries.
pub const PUSH_PER_COMMAND: u32 = 12;

/// Opcodes.
pub mod op {
    /// `bind slot iova len`: the binding `slot` names (`group << 16 |
    /// binding`) = `len` bytes at `iova` (`len` 0: to the end of the
    /// mapping holding `iova`).
    pub const BIND: u32 = 1;
    /// `push offset count values…`: set push-constant words.
    pub const PUSH: u32 = 2;
    /// `dispatch pipeline x y z`.
    pub const DISPATCH: u32 = 3;
    /// `copy src dst len`: copy bytes between buffers.
    pub const COPY: u32 = 4;
    /// `fill dst len value`: fill with a 32-bit value.
    pub const FILL: u32 = 5;
    /// `barrier`: what came before finishes before what follows starts.
    pub const BARRIER: u32 = 6;
    /// `signal value`: end of a job; complete when everything before it is
    /// done.
    pub const SIGNAL: u32 = 7;
    /// `image slot iova format width height`: the binding `slot` names is
    /// a 2D image whose texels (row-major, tightly packed) are the
    /// `width * height * texel` bytes at `iova`.
    pub const IMAGE: u32 = 8;
    /// `sampler slot filter address`: the binding `slot` names is a
    /// sampler (filter 0 nearest, 1 linear; address 0 clamp to edge,
    /// 1 repeat, 2 mirrored repeat).
    pub const SAMPLER: u32 = 9;
}

/// Texel formats of images (`image` command; WGSL `texture_storage_2d`
/// formats, GLSL `layout(<format>)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ImageFormat {
    /// `rgba8unorm`: 4 bytes, floats 0..1.
    Rgba8Unorm = 1,
    /// `rgba8uint`: 4 bytes.
    Rgba8Uint = 2,
    /// `r32float`: 4 bytes.
    R32Float = 3,
    /// `r32uint`: 4 bytes.
    R32Uint = 4,
    /// `r32sint`: 4 bytes.
    R32Sint = 5,
    /// `rgba32float`: 16 bytes.
    Rgba32Float = 6,
}

impl ImageFormat {
    /// The format of a command word.
    pub fn from_u32(v: u32) -> Option<ImageFormat> {
        use ImageFormat::{R32Float, R32Sint, R32Uint, Rgba32Float, Rgba8Uint, Rgba8Unorm};
        [
            Rgba8Unorm,
            Rgba8Uint,
            R32Float,
            R32Uint,
            R32Sint,
            Rgba32Float,
        ]
        .into_iter()
        .find(|f| *f as u32 == v)
    }

    /// Bytes per texel.
    pub fn texel_bytes(self) -> u32 {
        match self {
            ImageFormat::Rgba32Float => 16,
            _ => 4,
        }
    }
}

/// Widest and tallest image an `image` command may describe.
pub const MAX_IMAGE_SIZE: u32 = 16384;

/// One decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Set the buffer of one binding.
    Bind {
        /// Bind group (descriptor set), below [`MAX_GROUPS`].
        group: u32,
        /// Binding number in the group, below [`MAX_BINDING`].
        binding: u32,
        /// First byte.
        iova: u32,
        /// Bytes (0: to the end of the mapping).
        len: u32,
    },
    /// Set push-constant words `offset..offset + count`.
    Push {
        /// First word, below [`PUSH_WORDS`].
        offset: u32,
        /// Words, 1..=[`PUSH_PER_COMMAND`], ending at or before [`PUSH_WORDS`].
        count: u32,
        /// The values (only the first `count` count).
        values: [u32; PUSH_PER_COMMAND as usize],
    },
    /// Run pipeline `pipeline` over `groups` workgroups.
    Dispatch {
        /// Index of the pipeline (compute entry point) in the firmware.
        pipeline: u32,
        /// Workgroups in x, y, z.
        groups: [u32; 3],
    },
    /// Copy `len` bytes from `src` to `dst` (4-byte multiples).
    Copy {
        /// Source iova.
        src: u32,
        /// Destination iova.
        dst: u32,
        /// Bytes.
        len: u32,
    },
    /// Fill `len` bytes at `dst` with `value` (4-byte multiples).
    Fill {
        /// Destination iova.
        dst: u32,
        /// Bytes.
        len: u32,
        /// The 32-bit pattern.
        value: u32,
    },
    /// Order what came before before what follows.
    Barrier,
    /// End of a job.
    Signal {
        /// Echoed in the completion's `result[0]`.
        value: u32,
    },
    /// Bind a 2D image whose texels are at `iova`.
    Image {
        /// Bind group, below [`MAX_GROUPS`].
        group: u32,
        /// Binding, below [`MAX_BINDING`].
        binding: u32,
        /// First texel.
        iova: u32,
        /// Texel format.
        format: ImageFormat,
        /// Texels per row, 1..=[`MAX_IMAGE_SIZE`].
        width: u32,
        /// Rows, 1..=[`MAX_IMAGE_SIZE`].
        height: u32,
    },
    /// Bind a sampler.
    Sampler {
        /// Bind group, below [`MAX_GROUPS`].
        group: u32,
        /// Binding, below [`MAX_BINDING`].
        binding: u32,
        /// Linear (else nearest) filtering.
        linear: bool,
        /// 0 clamp to edge, 1 repeat, 2 mirrored repeat.
        address: u32,
    },
}

/// Why an entry is not a command (the device answers [`Status::BadCommand`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    Opcode(u32),
    /// Bind group or binding out of range (the word: `group << 16 | binding`).
    #[error(
        "binding word {0:#x} out of range (group below {MAX_GROUPS}, binding below {MAX_BINDING})"
    )]
    Slot(u32),
    /// Push range out of bounds.
    #[error("push of {count} words at {offset} outside 32 words (1..=12 per command)")]
    Push {
        /// First word.
        offset: u32,
        /// Count.
        count: u32,
    },
    /// A length or address not a multiple of 4.
    #[error("copy and fill need 4-byte aligned addresses and lengths")]
    Unaligned,
    /// Argument words that must be zero are not.
    #[error("argument word {0} must be 0")]
    Reserved(usize),
    /// An image's format or size, or a sampler's mode, out of range.
    #[error("image format or size, or sampler mode, out of range")]
    Image,
}

impl Command {
    /// Decode a submission entry. Never panics; refuses unknown opcodes,
    /// out-of-range slots and push ranges, unaligned copies and fills, and
    /// non-zero unused argument words (room to extend the format).
    pub fn decode(sqe: &Sqe) -> Result<Command, DecodeError> {
        let a = &sqe.args;
        let used = match sqe.opcode {
            op::BIND | op::COPY | op::FILL => 3,
            op::PUSH => 2 + (a[1].min(PUSH_PER_COMMAND) as usize),
            op::DISPATCH => 4,
            op::BARRIER => 0,
            op::SIGNAL => 1,
            op::IMAGE => 5,
            op::SAMPLER => 3,
            other => return Err(DecodeError::Opcode(other)),
        };
        let slot = |w: u32| {
            let (group, binding) = (w >> 16, w & 0xffff);
            if group >= MAX_GROUPS || binding >= MAX_BINDING {
                return Err(DecodeError::Slot(w));
            }
            Ok((group, binding))
        };
        if let Some(i) = (used..a.len()).find(|&i| a[i] != 0) {
            return Err(DecodeError::Reserved(i));
        }
        Ok(match sqe.opcode {
            op::BIND => {
                let (group, binding) = slot(a[0])?;
                Command::Bind {
                    group,
                    binding,
                    iova: a[1],
                    len: a[2],
                }
            }
            op::PUSH => {
                let (offset, count) = (a[0], a[1]);
                if count == 0
                    || count > PUSH_PER_COMMAND
                    || offset.saturating_add(count) > PUSH_WORDS
                {
                    return Err(DecodeError::Push { offset, count });
                }
                let mut values = [0u32; PUSH_PER_COMMAND as usize];
                values.copy_from_slice(&a[2..2 + PUSH_PER_COMMAND as usize]);
                Command::Push {
                    offset,
                    count,
                    values,
                }
            }
            op::DISPATCH => Command::Dispatch {
                pipeline: a[0],
                groups: [a[1], a[2], a[3]],
            },
            op::COPY => {
                if !(a[0] | a[1] | a[2]).is_multiple_of(4) {
                    return Err(DecodeError::Unaligned);
                }
                Command::Copy {
                    src: a[0],
                    dst: a[1],
                    len: a[2],
                }
            }
            op::FILL => {
                if !(a[0] | a[1]).is_multiple_of(4) {
                    return Err(DecodeError::Unaligned);
                }
                Command::Fill {
                    dst: a[0],
                    len: a[1],
                    value: a[2],
                }
            }
            op::BARRIER => Command::Barrier,
            op::IMAGE => {
                let (group, binding) = slot(a[0])?;
                let format = ImageFormat::from_u32(a[2]).ok_or(DecodeError::Image)?;
                let size = 1..=MAX_IMAGE_SIZE;
                if !size.contains(&a[3]) || !size.contains(&a[4]) {
                    return Err(DecodeError::Image);
                }
                Command::Image {
                    group,
                    binding,
                    iova: a[1],
                    format,
                    width: a[3],
                    height: a[4],
                }
            }
            op::SAMPLER => {
                let (group, binding) = slot(a[0])?;
                if a[1] > 1 || a[2] > 2 {
                    return Err(DecodeError::Image);
                }
                Command::Sampler {
                    group,
                    binding,
                    linear: a[1] == 1,
                    address: a[2],
                }
            }
            _ => Command::Signal { value: a[0] },
        })
    }

    /// The submission entry for this command, with `tag`.
    pub fn encode(&self, tag: u32) -> Sqe {
        let mut args = [0u32; 14];
        let opcode = match *self {
            Command::Bind {
                group,
                binding,
                iova,
                len,
            } => {
                args[..3].copy_from_slice(&[group << 16 | binding, iova, len]);
                op::BIND
            }
            Command::Push {
                offset,
                count,
                values,
            } => {
                args[0] = offset;
                args[1] = count;
                let n = count.min(PUSH_PER_COMMAND) as usize;
                args[2..2 + n].copy_from_slice(&values[..n]);
                op::PUSH
            }
            Command::Dispatch { pipeline, groups } => {
                args[0] = pipeline;
                args[1..4].copy_from_slice(&groups);
                op::DISPATCH
            }
            Command::Copy { src, dst, len } => {
                args[..3].copy_from_slice(&[src, dst, len]);
                op::COPY
            }
            Command::Fill { dst, len, value } => {
                args[..3].copy_from_slice(&[dst, len, value]);
                op::FILL
            }
            Command::Barrier => op::BARRIER,
            Command::Signal { value } => {
                args[0] = value;
                op::SIGNAL
            }
            Command::Image {
                group,
                binding,
                iova,
                format,
                width,
                height,
            } => {
                args[..5].copy_from_slice(&[
                    group << 16 | binding,
                    iova,
                    format as u32,
                    width,
                    height,
                ]);
                op::IMAGE
            }
            Command::Sampler {
                group,
                binding,
                linear,
                address,
            } => {
                args[..3].copy_from_slice(&[group << 16 | binding, u32::from(linear), address]);
                op::SAMPLER
            }
        };
        Sqe { opcode, tag, args }
    }
}

/// A typed GPU job: the commands a domain queues for one piece of work,
/// ending in a `signal`. The SDK's way to build GPU work without writing
/// entries by hand.
///
/// ```
/// use coproc_abi::gpu::Job;
/// let job = Job::new()
///     .bind(0, 0x1000_0000, 4096)
///     .bind(1, 0x1000_1000, 4096)
///     .push_f32(0, &[2.0])
///     .push_u32(4, &[1024])
///     .dispatch(0, [16, 1, 1])
///     .signal(1);
/// assert_eq!(job.sqes(100).len(), 6);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    cmds: Vec<Command>,
    /// The first misuse of the builder (the SDK refuses the job with it).
    error: Option<String>,
}

impl Job {
    /// An empty job.
    pub fn new() -> Job {
        Job::default()
    }

    fn with(mut self, c: Command) -> Job {
        self.cmds.push(c);
        self
    }

    fn misuse(mut self, why: String) -> Job {
        self.error.get_or_insert(why);
        self
    }

    /// The first misuse of the builder, if any (a zero-length bind, a push
    /// at an offset that is not a multiple of 4 bytes or beyond the push
    /// constants): the SDK refuses such a job before sending it.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Bind exactly `len` bytes at `iova` to `@group(0) @binding(binding)`
    /// (what `arrayLength()` sees). An iova beyond 32 bits is sent as one
    /// the device refuses.
    #[must_use]
    pub fn bind(self, binding: u32, iova: u64, len: u64) -> Job {
        self.bind_group(0, binding, iova, len)
    }

    /// Bind exactly `len` bytes at `iova` to `@group(group)
    /// @binding(binding)`.
    #[must_use]
    pub fn bind_group(self, group: u32, binding: u32, iova: u64, len: u64) -> Job {
        if len == 0 {
            return self.misuse(format!(
                "bind of 0 bytes to group {group} binding {binding} (give the exact length; \
                 Job::bind_to_end binds to the end of the mapping)"
            ));
        }
        self.bind_raw(group, binding, iova, len)
    }

    /// Bind from `iova` to the end of the mapping holding it (page
    /// rounded: `arrayLength()` counts the padding too).
    #[must_use]
    pub fn bind_to_end(self, group: u32, binding: u32, iova: u64) -> Job {
        self.bind_raw(group, binding, iova, 0)
    }

    fn bind_raw(self, group: u32, binding: u32, iova: u64, len: u64) -> Job {
        self.with(Command::Bind {
            group,
            binding,
            iova: u32::try_from(iova).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }

    /// Bind a `width` × `height` image of `format` whose texels (row-major,
    /// tightly packed) are at `iova` to `@group(group) @binding(binding)`
    /// (a `texture_2d` or `texture_storage_2d`; the device copies the
    /// texels in before each dispatch and, for a storage image the shader
    /// writes, back out after).
    #[must_use]
    pub fn image(
        self,
        group: u32,
        binding: u32,
        iova: u64,
        format: ImageFormat,
        size: [u32; 2],
    ) -> Job {
        self.with(Command::Image {
            group,
            binding,
            iova: u32::try_from(iova).unwrap_or(u32::MAX),
            format,
            width: size[0],
            height: size[1],
        })
    }

    /// Bind a sampler to `@group(group) @binding(binding)`: linear or
    /// nearest filtering, clamp to edge (0), repeat (1) or mirrored repeat
    /// (2) addressing.
    #[must_use]
    pub fn sampler(self, group: u32, binding: u32, linear: bool, address: u32) -> Job {
        self.with(Command::Sampler {
            group,
            binding,
            linear,
            address,
        })
    }

    /// Set push constants from byte `offset` (a multiple of 4, as in
    /// GLSL's `offset`, WGSL's struct layout and wgpu's
    /// `set_push_constants`) to these bytes (a multiple of 4 long). Split
    /// into as many `push` commands as needed.
    #[must_use]
    pub fn push_bytes(mut self, offset: u32, bytes: &[u8]) -> Job {
        let end = u64::from(offset) + bytes.len() as u64;
        if !offset.is_multiple_of(4)
            || !bytes.len().is_multiple_of(4)
            || end > u64::from(PUSH_WORDS) * 4
        {
            return self.misuse(format!(
                "push of {} bytes at byte offset {offset}: offsets and lengths are multiples of \
                 4 within {} bytes",
                bytes.len(),
                PUSH_WORDS * 4
            ));
        }
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let first = offset / 4;
        for (i, chunk) in words.chunks(PUSH_PER_COMMAND as usize).enumerate() {
            let mut values = [0u32; PUSH_PER_COMMAND as usize];
            values[..chunk.len()].copy_from_slice(chunk);
            self = self.with(Command::Push {
                offset: u32::try_from(i)
                    .unwrap_or(u32::MAX)
                    .saturating_mul(PUSH_PER_COMMAND)
                    .saturating_add(first),
                count: u32::try_from(chunk.len()).unwrap_or(PUSH_PER_COMMAND),
                values,
            });
        }
        self
    }

    /// Set push constants from byte `offset` (a multiple of 4) to these
    /// 32-bit words.
    #[must_use]
    pub fn push_u32(self, offset: u32, words: &[u32]) -> Job {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.push_bytes(offset, &bytes)
    }

    /// Set push constants from byte `offset` (a multiple of 4) to these
    /// floats.
    #[must_use]
    pub fn push_f32(self, offset: u32, values: &[f32]) -> Job {
        let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        self.push_u32(offset, &words)
    }

    /// Run pipeline `pipeline` over `groups` workgroups.
    #[must_use]
    pub fn dispatch(self, pipeline: u32, groups: [u32; 3]) -> Job {
        self.with(Command::Dispatch { pipeline, groups })
    }

    /// Copy `len` bytes from `src` to `dst`.
    #[must_use]
    pub fn copy(self, src: u64, dst: u64, len: u64) -> Job {
        let w = |v: u64| u32::try_from(v).unwrap_or(!3);
        self.with(Command::Copy {
            src: w(src),
            dst: w(dst),
            len: w(len),
        })
    }

    /// Fill `len` bytes at `dst` with `value`.
    #[must_use]
    pub fn fill(self, dst: u64, len: u64, value: u32) -> Job {
        let w = |v: u64| u32::try_from(v).unwrap_or(!3);
        self.with(Command::Fill {
            dst: w(dst),
            len: w(len),
            value,
        })
    }

    /// Everything before finishes before anything after starts.
    #[must_use]
    pub fn barrier(self) -> Job {
        self.with(Command::Barrier)
    }

    /// End the job; its completion carries `value` in `result[0]`.
    #[must_use]
    pub fn signal(self, value: u32) -> Job {
        self.with(Command::Signal { value })
    }

    /// Add any command.
    #[must_use]
    pub fn command(self, c: Command) -> Job {
        self.with(c)
    }

    /// The commands.
    pub fn commands(&self) -> &[Command] {
        &self.cmds
    }

    /// The entries, tagged `first_tag`, `first_tag + 1`, …
    pub fn sqes(&self, first_tag: u32) -> Vec<Sqe> {
        self.cmds
            .iter()
            .enumerate()
            .map(|(i, c)| c.encode(first_tag.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX))))
            .collect()
    }
}

/// What a job's `signal` completion says, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDone {
    /// The signal's tag.
    pub tag: u32,
    /// Ok, or Aborted when a command of the job was refused.
    pub status: Option<Status>,
    /// The signal's value.
    pub value: u32,
    /// GPU nanoseconds the job's commands took (device timestamps).
    pub gpu_ns: u64,
}

impl JobDone {
    /// Decode a completion (of a `signal` or of a refused command).
    pub fn from_cqe(c: &crate::queue::Cqe) -> JobDone {
        JobDone {
            tag: c.tag,
            status: Status::from_u32(c.status),
            value: c.result[0],
            gpu_ns: u64::from(c.result[1]) | (u64::from(c.result[2]) << 32),
        }
    }
}

/// The status word of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// The job completed.
    Ok = 0,
    /// The entry is not a command (see [`DecodeError`]).
    BadCommand = 1,
    /// The pipeline index is not one of this vcoproc's pipelines.
    BadPipeline = 2,
    /// The iova range is not inside one of this vcoproc's mappings or
    /// device-local buffers.
    BadIova = 3,
    /// A write to a read-only mapping (a writable binding, a copy or fill
    /// destination).
    ReadOnly = 4,
    /// Workgroup counts zero or beyond the device's or the daemon's limits.
    BadGroups = 5,
    /// A binding the pipeline uses is unset, too small or misaligned.
    BadBinding = 6,
    /// An earlier command of this job was refused; the job was skipped.
    Aborted = 7,
    /// No firmware is loaded.
    NoFirmware = 8,
}

impl Status {
    /// The status of a completion word (None: not a known status).
    pub fn from_u32(v: u32) -> Option<Status> {
        use Status::{
            Aborted, BadBinding, BadCommand, BadGroups, BadIova, BadPipeline, NoFirmware, Ok,
            ReadOnly,
        };
        [
            Ok,
            BadCommand,
            BadPipeline,
            BadIova,
            ReadOnly,
            BadGroups,
            BadBinding,
            Aborted,
            NoFirmware,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    /// A short description.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadCommand => "malformed command",
            Status::BadPipeline => "no such pipeline in this vcoproc's firmware",
            Status::BadIova => "iova range not in this vcoproc's mappings",
            Status::ReadOnly => "write to a read-only mapping",
            Status::BadGroups => "workgroup counts zero or over the limit",
            Status::BadBinding => "binding unset, too small or misaligned",
            Status::Aborted => "job skipped after a refused command",
            Status::NoFirmware => "no firmware loaded",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
// Casts of values the test itself chose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_commands() -> Vec<Command> {
        vec![
            Command::Bind {
                group: 3,
                binding: 31,
                iova: 0x1000_0000,
                len: 4096,
            },
            Command::Push {
                offset: 20,
                count: 12,
                values: std::array::from_fn(|i| i as u32 + 1),
            },
            Command::Push {
                offset: 0,
                count: 1,
                values: [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            Command::Dispatch {
                pipeline: 2,
                groups: [4, 5, 6],
            },
            Command::Copy {
                src: 0x1000,
                dst: 0x2000,
                len: 64,
            },
            Command::Fill {
                dst: 0x1000,
                len: 8,
                value: 0xdead_beef,
            },
            Command::Barrier,
            Command::Signal { value: 77 },
            Command::Image {
                group: 1,
                binding: 2,
                iova: 0x2000_0000,
                format: ImageFormat::Rgba32Float,
                width: 640,
                height: 480,
            },
            Command::Sampler {
                group: 0,
                binding: 5,
                linear: true,
                address: 2,
            },
        ]
    }

    #[test]
    fn round_trip() {
        for c in all_commands() {
            let s = c.encode(5);
            assert_eq!(s.tag, 5);
            assert_eq!(Command::decode(&s), Ok(c), "{c:?}");
        }
    }

    #[test]
    fn refuses_malformed() {
        let sqe = |opcode, args: &[u32]| {
            let mut s = Sqe {
                opcode,
                ..Default::default()
            };
            s.args[..args.len()].copy_from_slice(args);
            s
        };
        assert_eq!(Command::decode(&sqe(0, &[])), Err(DecodeError::Opcode(0)));
        assert_eq!(Command::decode(&sqe(99, &[])), Err(DecodeError::Opcode(99)));
        assert_eq!(
            Command::decode(&sqe(op::BIND, &[32, 0, 0])),
            Err(DecodeError::Slot(32))
        );
        assert_eq!(
            Command::decode(&sqe(op::BIND, &[8 << 16, 0, 0])),
            Err(DecodeError::Slot(8 << 16))
        );
        assert!(Command::decode(&sqe(op::BIND, &[7 << 16 | 31, 0, 0])).is_ok());
        for bad in [
            sqe(op::IMAGE, &[0, 0, 0, 1, 1]),
            sqe(op::IMAGE, &[0, 0, 7, 1, 1]),
            sqe(op::IMAGE, &[0, 0, 1, 0, 1]),
            sqe(op::IMAGE, &[0, 0, 1, 1, 16385]),
            sqe(op::SAMPLER, &[0, 2, 0]),
            sqe(op::SAMPLER, &[0, 0, 3]),
        ] {
            assert_eq!(Command::decode(&bad), Err(DecodeError::Image), "{bad:?}");
        }
        assert_eq!(
            Command::decode(&sqe(op::IMAGE, &[8 << 16, 0, 1, 1, 1])),
            Err(DecodeError::Slot(8 << 16))
        );
        assert!(matches!(
            Command::decode(&sqe(op::PUSH, &[30, 3])),
            Err(DecodeError::Push { .. })
        ));
        assert!(matches!(
            Command::decode(&sqe(op::PUSH, &[0, 0])),
            Err(DecodeError::Push { .. })
        ));
        assert!(matches!(
            Command::decode(&sqe(op::PUSH, &[0, 13])),
            Err(DecodeError::Push { .. })
        ));
        assert_eq!(
            Command::decode(&sqe(op::COPY, &[0, 4, 6])),
            Err(DecodeError::Unaligned)
        );
        assert_eq!(
            Command::decode(&sqe(op::FILL, &[2, 4, 6])),
            Err(DecodeError::Unaligned)
        );
        assert_eq!(
            Command::decode(&sqe(op::BARRIER, &[0, 1])),
            Err(DecodeError::Reserved(1))
        );
        assert_eq!(
            Command::decode(&sqe(op::PUSH, &[0, 1, 5, 6])),
            Err(DecodeError::Reserved(3))
        );
    }

    /// Push offsets are bytes, as shader authors write them; misuse is
    /// recorded, not sent.
    #[test]
    fn push_in_bytes_and_misuse() {
        let j = Job::new().push_u32(8, &[7, 8]).push_f32(4, &[1.5]);
        let words: Vec<(u32, u32, u32)> = j
            .commands()
            .iter()
            .filter_map(|c| match *c {
                Command::Push {
                    offset,
                    count,
                    values,
                } => Some((offset, count, values[0])),
                _ => None,
            })
            .collect();
        assert_eq!(words, vec![(2, 2, 7), (1, 1, 1.5f32.to_bits())]);
        assert!(j.error().is_none());
        let long: Vec<u32> = (0..20).collect();
        assert_eq!(Job::new().push_u32(0, &long).commands().len(), 2);
        for bad in [
            Job::new().push_u32(2, &[1]),
            Job::new().push_bytes(0, &[1, 2]),
            Job::new().push_u32(124, &[1, 2]),
            Job::new().bind(0, 0x1000_0000, 0),
        ] {
            assert!(bad.error().is_some(), "{bad:?}");
        }
        assert!(Job::new().bind_to_end(1, 2, 0x1000_0000).error().is_none());
    }

    #[test]
    fn statuses_round_trip() {
        for v in 0..32 {
            if let Some(s) = Status::from_u32(v) {
                assert_eq!(s as u32, v);
                assert!(!s.describe().is_empty());
            }
        }
        assert_eq!(Status::from_u32(8), Some(Status::NoFirmware));
        assert_eq!(Status::from_u32(9), None);
    }

    proptest! {
        /// Any 64 bytes decode without panicking, and whatever decodes
        /// encodes back to the same entry (nothing is silently dropped).
        #[test]
        fn hostile_entries(opcode in 0u32..12, tag: u32, args in proptest::array::uniform14(any::<u32>()), small in any::<bool>()) {
            let args = if small { args.map(|a| a % 16) } else { args };
            let sqe = Sqe { opcode, tag, args };
            if let Ok(c) = Command::decode(&sqe) {
                prop_assert_eq!(c.encode(tag), sqe);
            }
        }
    }
}
