//! The example firmware of the coproc SDK, built from `firmware/` with clang
//! at build time, and a host reference implementation of each, used by the
//! tests, the demo and the benchmarks to check what the device computed.
//! The GPU (Vulkan compute) examples are in [`gpu`].

pub mod drive;
pub mod gpu;
pub mod reference;

/// An example firmware image.
#[derive(Debug, Clone, Copy)]
pub struct Firmware {
    /// Its name (also the C source's file name).
    pub name: &'static str,
    /// The ELF image.
    pub elf: &'static [u8],
}

macro_rules! firmware {
    ($($id:ident = $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("The `", $name, "` example firmware (built from firmware/examples/).")]
            pub const $id: Firmware = Firmware {
                name: $name,
                elf: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".elf")),
            };
        )*
        /// Every example firmware.
        pub const ALL: &[Firmware] = &[$($id),*];
    };
}

firmware!(
    ECHO = "echo",
    FIR = "fir",
    CRC32 = "crc32",
    HOG = "hog",
    FAULTY = "faulty",
    PROBE = "probe",
    QECHO = "qecho",
    PAGER = "pager",
    LISTWALK = "listwalk",
    LOCALBUF = "localbuf",
    SCRIBBLE = "scribble",
    HELLO = "hello",
    FFT = "fft",
    BIQUAD = "biquad",
    BIQUAD_SOFT = "biquad_soft",
    IRQ = "irq",
    BIGCODE = "bigcode",
    ECHO_SMALL = "echo_small",
    BADEXC = "badexc"
);

/// The C header of the SDK (the firmware ABI).
pub const HEADER: &str = include_str!("../../../firmware/sdk/coproc.h");

/// Look an example up by name.
pub fn by_name(name: &str) -> Option<Firmware> {
    ALL.iter().copied().find(|f| f.name == name)
}
