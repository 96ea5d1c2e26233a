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

use alloc::format;
use alloc::string::String;
use uefi::boot;
use uefi::proto::pci::root_bridge::PciRootBridgeIo;
use uefi::proto::pci::PciIoAddress;

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

/// Arms the first i6300esb found to reset the machine after about
/// `timeout_s` seconds; says why not when there is none.
pub fn arm(timeout_s: u32) -> Result<(), String> {
    let handles = boot::find_handles::<PciRootBridgeIo>()
        .map_err(|e| format!("no PCI root bridge: {:?}", e.status()))?;
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
                return program(&mut bridge, addr, timeout_s)
                    .map_err(|e| format!("programming the i6300esb: {:?}", e.status()));
            }
        }
    }
    Err("no watchdog this stage can drive (an i6300esb)".into())
}

fn program(bridge: &mut PciRootBridgeIo, addr: PciIoAddress, timeout_s: u32) -> uefi::Result {
    let bar = bridge.pci().read_one::<u32>(addr.with_register(BAR0))?;
    // A memory BAR (bit 0 clear), 32-bit (type 00 in bits 2:1, as the
    // 6300ESB's is), and assigned by the firmware.
    let base = u64::from(bar & !0xf);
    if bar & 0x7 != 0 || base == 0 {
        return Err(uefi::Status::DEVICE_ERROR.into());
    }
    let command = bridge.pci().read_one::<u16>(addr.with_register(COMMAND))?;
    bridge
        .pci()
        .write_one(addr.with_register(COMMAND), command | COMMAND_MEMORY)?;
    bridge
        .pci()
        .write_one(addr.with_register(CONFIG), CONFIG_RESET_NO_IRQ)?;
    bridge.pci().write_one(addr.with_register(LOCK), 0u8)?;
    let unlock = |bridge: &mut PciRootBridgeIo| -> uefi::Result {
        for step in UNLOCK {
            bridge.memory().write_one(base + RELOAD, step)?;
        }
        Ok(())
    };
    // Each stage counts `timeout << 9` ticks of 1 kHz: the two together
    // about `timeout_s` seconds (Linux's driver sets its heartbeat so).
    let ticks = timeout_s.clamp(1, 2046) << 9;
    unlock(bridge)?;
    bridge
        .memory()
        .write_one(base + RELOAD, TIMED_OUT | RELOAD_NOW)?;
    for timer in [TIMER1, TIMER2] {
        unlock(bridge)?;
        bridge.memory().write_one(base + timer, ticks)?;
    }
    unlock(bridge)?;
    bridge.memory().write_one(base + RELOAD, RELOAD_NOW)?;
    bridge
        .pci()
        .write_one(addr.with_register(LOCK), LOCK_ENABLE)
}
