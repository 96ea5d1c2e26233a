//! Arming a hardware watchdog before the kernel starts, so that a release
//! that hangs before it takes the watchdog over resets the machine, and the
//! next boot spends another try (docs/boot-flow.md, "Rollback without a
//! health check").
//!
//! UEFI's own watchdog (SetWatchdogTimer) stops at ExitBootServices, which
//! the kernel's stub calls first thing, so it cannot do this. Only a
//! hardware watchdog outlives the hand-over, and UEFI has no protocol for
//! one: each board's must be driven by its registers. This is the Intel
//! 6300ESB's (PCI 8086:25ab), the one QEMU offers on x86-64 and arm64
//! alike, programmed as Linux's i6300esb driver does; a board with another
//! watchdog (SBSA generic, sp805, imx2) needs its own few lines here.
//!
//! The device is found through the firmware's PCI root bridge protocol
//! (EDK2: OVMF, AAVMF). U-Boot's UEFI has none; there the PCI host bridge
//! is read from the device tree U-Boot hands over (a generic ECAM host,
//! `pci-host-ecam-generic`, as on QEMU's virt machine), and config space
//! reached through it directly.

use alloc::format;
use alloc::string::String;
use uefi::boot;
use uefi::proto::pci::root_bridge::PciRootBridgeIo;
use uefi::proto::pci::PciIoAddress;
use uefi::{guid, Guid};

/// Vendor 8086, device 25ab, as config space's first word reads them.
const I6300ESB: u32 = 0x25ab_8086;
const COMMAND: u8 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const BAR0: u8 = 0x10;
/// Config register: bits 1:0 = 11 no interrupt on the first stage, bit 2 =
/// 0 a 1 kHz count, bit 5 = 0 the second stage resets the machine.
const CONFIG: u8 = 0x60;
const CONFIG_RESET_NO_IRQ: u16 = 0x0003;
/// Lock register: bit 1 enables it. The lock bit (0) stays clear, so that
/// the release's driver can take it over (and stop or pet it).
const LOCK: u8 = 0x68;
const LOCK_ENABLE: u8 = 1 << 1;
/// Memory-mapped: the two stages' preloads, and the reload register, each
/// written only after the two-step unlock.
const TIMER1: u64 = 0x00;
const TIMER2: u64 = 0x04;
const RELOAD: u64 = 0x0c;
const RELOAD_NOW: u16 = 1 << 8;
const TIMED_OUT: u16 = 1 << 9;
const UNLOCK: [u16; 2] = [0x80, 0x86];

/// The flattened device tree in the EFI configuration table (EBBR).
const DEVICE_TREE_GUID: Guid = guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");

/// Config space and memory of one PCI function, however reached.
trait Function {
    fn read32(&mut self, reg: u8) -> Result<u32, String>;
    fn read16(&mut self, reg: u8) -> Result<u16, String>;
    fn write16(&mut self, reg: u8, v: u16) -> Result<(), String>;
    fn write8(&mut self, reg: u8, v: u8) -> Result<(), String>;
    /// A 16-bit write to memory space (the device's BAR).
    fn mem_write16(&mut self, addr: u64, v: u16) -> Result<(), String>;
    fn mem_write32(&mut self, addr: u64, v: u32) -> Result<(), String>;
}

/// Arms the first i6300esb found to reset the machine after about
/// `timeout_s` seconds; says why not when there is none.
pub fn arm(timeout_s: u32) -> Result<(), String> {
    match boot::find_handles::<PciRootBridgeIo>() {
        Ok(handles) => {
            for handle in handles {
                let Some(mut bridge) = crate::disk::shared::<PciRootBridgeIo>(handle) else {
                    continue;
                };
                let Ok(tree) = bridge.enumerate() else {
                    continue;
                };
                for addr in tree.iter().copied() {
                    let id = bridge.pci().read_one::<u32>(addr.with_register(0));
                    if id == Ok(I6300ESB) {
                        return program(
                            &mut Bridged {
                                bridge: &mut bridge,
                                addr,
                            },
                            timeout_s,
                        );
                    }
                }
            }
            Err("no watchdog this stage can drive (an i6300esb)".into())
        }
        Err(e) => match ecam_function() {
            Some(mut f) => program(&mut f, timeout_s),
            None => Err(format!(
                "no PCI root bridge ({:?}), and no i6300esb behind the device tree's ECAM host",
                e.status()
            )),
        },
    }
}

fn program(f: &mut dyn Function, timeout_s: u32) -> Result<(), String> {
    let bar = f.read32(BAR0)?;
    // A memory BAR (bit 0 clear), 32-bit (type 00 in bits 2:1, as the
    // 6300ESB's is), and assigned by the firmware.
    let base = u64::from(bar & !0xf);
    if bar & 0x7 != 0 || base == 0 {
        return Err(format!("the i6300esb's BAR0 is not assigned ({bar:#x})"));
    }
    let command = f.read16(COMMAND)?;
    f.write16(COMMAND, command | COMMAND_MEMORY)?;
    f.write16(CONFIG, CONFIG_RESET_NO_IRQ)?;
    f.write8(LOCK, 0)?;
    let unlock = |f: &mut dyn Function| -> Result<(), String> {
        for step in UNLOCK {
            f.mem_write16(base + RELOAD, step)?;
        }
        Ok(())
    };
    // Each stage counts `timeout << 9` ticks of 1 kHz: the two together
    // about `timeout_s` seconds (Linux's driver sets its heartbeat so).
    let ticks = timeout_s.clamp(1, 2046) << 9;
    unlock(f)?;
    f.mem_write16(base + RELOAD, TIMED_OUT | RELOAD_NOW)?;
    for timer in [TIMER1, TIMER2] {
        unlock(f)?;
        f.mem_write32(base + timer, ticks)?;
    }
    unlock(f)?;
    f.mem_write16(base + RELOAD, RELOAD_NOW)?;
    f.write8(LOCK, LOCK_ENABLE)
}

/// A function reached through the firmware's root bridge protocol.
struct Bridged<'a> {
    bridge: &'a mut PciRootBridgeIo,
    addr: PciIoAddress,
}

fn status(e: uefi::Error) -> String {
    format!("programming the i6300esb: {:?}", e.status())
}

impl Function for Bridged<'_> {
    fn read32(&mut self, reg: u8) -> Result<u32, String> {
        let a = self.addr.with_register(reg);
        self.bridge.pci().read_one(a).map_err(status)
    }
    fn read16(&mut self, reg: u8) -> Result<u16, String> {
        let a = self.addr.with_register(reg);
        self.bridge.pci().read_one(a).map_err(status)
    }
    fn write16(&mut self, reg: u8, v: u16) -> Result<(), String> {
        let a = self.addr.with_register(reg);
        self.bridge.pci().write_one(a, v).map_err(status)
    }
    fn write8(&mut self, reg: u8, v: u8) -> Result<(), String> {
        let a = self.addr.with_register(reg);
        self.bridge.pci().write_one(a, v).map_err(status)
    }
    fn mem_write16(&mut self, addr: u64, v: u16) -> Result<(), String> {
        self.bridge.memory().write_one(addr, v).map_err(status)
    }
    fn mem_write32(&mut self, addr: u64, v: u32) -> Result<(), String> {
        self.bridge.memory().write_one(addr, v).map_err(status)
    }
}

/// A function's config space in a memory-mapped ECAM window, and its
/// BAR, both reached by plain loads and stores: UEFI maps memory and
/// device registers one to one.
struct Ecam {
    config: u64,
}

impl Ecam {
    fn at(&self, reg: u8) -> u64 {
        self.config + u64::from(reg)
    }
}

impl Function for Ecam {
    fn read32(&mut self, reg: u8) -> Result<u32, String> {
        // SAFETY: `config` is a function's 4 KiB window inside the ECAM
        // range the device tree gives, mapped by the firmware; `reg` < 256
        // and aligned for the width.
        Ok(unsafe { core::ptr::read_volatile(self.at(reg) as *const u32) })
    }
    fn read16(&mut self, reg: u8) -> Result<u16, String> {
        // SAFETY: as in `read32`.
        Ok(unsafe { core::ptr::read_volatile(self.at(reg) as *const u16) })
    }
    fn write16(&mut self, reg: u8, v: u16) -> Result<(), String> {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.at(reg) as *mut u16, v) };
        Ok(())
    }
    fn write8(&mut self, reg: u8, v: u8) -> Result<(), String> {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.at(reg) as *mut u8, v) };
        Ok(())
    }
    fn mem_write16(&mut self, addr: u64, v: u16) -> Result<(), String> {
        // SAFETY: `addr` is inside the i6300esb's BAR0 (its registers,
        // 16 bytes), assigned by the firmware and enabled above.
        unsafe { core::ptr::write_volatile(addr as *mut u16, v) };
        Ok(())
    }
    fn mem_write32(&mut self, addr: u64, v: u32) -> Result<(), String> {
        // SAFETY: as in `mem_write16`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, v) };
        Ok(())
    }
}

const FDT_HEADER: usize = 40;
const FDT_MAGIC: u32 = 0xd00d_feed;
/// Far above any board's tree (QEMU's virt gives 1 MiB).
const FDT_MAX: usize = 4 << 20;

/// The tree's size from its header, when the header is one: the magic, a
/// bounded size, and the structure and strings blocks inside it (the
/// parser slices them unchecked and would panic, and a panic resets).
fn checked_fdt_size(h: &[u8]) -> Option<usize> {
    let be = |at: usize| -> Option<usize> {
        let b: [u8; 4] = h.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(b)).ok()
    };
    let total = be(4)?;
    let within = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= total);
    let ok = be(0)? == FDT_MAGIC as usize
        && (FDT_HEADER..=FDT_MAX).contains(&total)
        && be(20)? >= 17
        && within(be(8)?, be(36)?)
        && within(be(12)?, be(32)?)
        && be(16)? < total;
    ok.then_some(total)
}

/// The i6300esb on bus 0 of the device tree's generic ECAM host, if any.
fn ecam_function() -> Option<Ecam> {
    let dtb = uefi::system::with_config_table(|t| {
        t.iter()
            .find(|e| e.guid == DEVICE_TREE_GUID)
            .map(|e| e.address as *const u8)
    })?;
    // SAFETY: the firmware's configuration table entry for the device
    // tree points at a flattened device tree, which stays in memory while
    // boot services run; its 40-byte header is read first.
    let header = unsafe { core::slice::from_raw_parts(dtb, FDT_HEADER) };
    let total = checked_fdt_size(header)?;
    // SAFETY: as above, and the header says the tree is `total` bytes,
    // bounded by `checked_fdt_size`.
    let fdt = fdt::Fdt::new(unsafe { core::slice::from_raw_parts(dtb, total) }).ok()?;
    let host = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    if host
        .property("status")
        .and_then(|p| p.as_str())
        .is_some_and(|s| s != "okay" && s != "ok")
    {
        return None;
    }
    let window = host.reg()?.next()?;
    let (base, size) = (window.starting_address as u64, window.size? as u64);
    // An ECAM window is 1 MiB a bus, aligned to it; anything else is not
    // one, and its "config space" would be arbitrary memory.
    if base == 0 || base % (1 << 20) != 0 || size < (1 << 20) {
        return None;
    }
    // Bus 0, devices 0..32, function 0: where QEMU's virt machine puts
    // devices on its root complex. 32 devices of 32 KiB each.
    (0..32u64)
        .map(|dev| dev << 15)
        .take_while(|&off| off + 0x1000 <= size)
        .map(|off| Ecam { config: base + off })
        .find_map(|mut f| (f.read32(0).ok()? == I6300ESB).then_some(f))
}
