//! Starting a Linux kernel through its own EFI stub, with a command line
//! and an initramfs, as the kernel's EFI boot protocol expects
//! (Documentation/admin-guide/efi-stub.rst).
//!
//! The command line is the image's load options (UCS-2). The initramfs is
//! offered the way Linux 5.8 and later look for it: a handle with a vendor
//! media device path `LINUX_EFI_INITRD_MEDIA_GUID` and the LoadFile2
//! protocol that copies it into the buffer the stub allocates. Firmware
//! starts the kernel with LoadImage and StartImage, so under Secure Boot it
//! checks the kernel's signature against its `db` as well.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use uefi::boot::{self, LoadImageSource};
use uefi::proto::loaded_image::LoadedImage;
use uefi::{guid, Guid, Handle, Status};
use uefi_raw::protocol::device_path::DevicePathProtocol;
use uefi_raw::protocol::media::LoadFile2Protocol;
use uefi_raw::Boolean;

const LINUX_EFI_INITRD_MEDIA_GUID: Guid = guid!("5568e427-68fc-4f3d-ac74-ca555231cc68");

/// Why the kernel could not be started: the step and the firmware's status.
#[derive(Debug, Clone, Copy)]
pub struct StartError {
    pub what: &'static str,
    pub status: Status,
}

/// The LoadFile2 interface with the initramfs it serves; the firmware and
/// the kernel's stub hold a pointer to it, so it is never freed.
#[repr(C)]
struct Initrd {
    protocol: LoadFile2Protocol,
    data: &'static [u8],
}

unsafe extern "efiapi" fn load_initrd(
    this: *mut LoadFile2Protocol,
    _file_path: *const DevicePathProtocol,
    boot_policy: Boolean,
    buffer_size: *mut usize,
    buffer: *mut c_void,
) -> Status {
    // LoadFile2 is never a boot-policy load (UEFI 2.10 §13.2).
    if this.is_null() || buffer_size.is_null() || bool::from(boot_policy) {
        return Status::INVALID_PARAMETER;
    }
    // SAFETY: `this` is the `protocol` field at the start of an `Initrd`
    // (repr(C)) that `offer_initrd` leaked, so it is valid for ever.
    let data = unsafe { (*this.cast::<Initrd>()).data };
    // SAFETY: the caller passes a valid pointer to the buffer's size.
    let size = unsafe { &mut *buffer_size };
    if buffer.is_null() || *size < data.len() {
        *size = data.len();
        return Status::BUFFER_TOO_SMALL;
    }
    // SAFETY: the caller's buffer holds at least `*size >= data.len()`
    // bytes, and it is not our own data.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), buffer.cast::<u8>(), data.len()) };
    *size = data.len();
    Status::SUCCESS
}

/// The initramfs as offered: the handle and the two interfaces on it.
struct Offered {
    handle: Handle,
    path: *const c_void,
    initrd: *const c_void,
}

impl Offered {
    /// Takes the offer back, so that the next kernel tried finds only its
    /// own initramfs (two handles with one device path would be ambiguous).
    fn withdraw(self) {
        // SAFETY: the interfaces were installed on this handle by
        // `offer_initrd` and nobody holds them once StartImage returned.
        unsafe {
            let _ = boot::uninstall_protocol_interface(
                self.handle,
                &LoadFile2Protocol::GUID,
                self.initrd,
            );
            let _ = boot::uninstall_protocol_interface(
                self.handle,
                &DevicePathProtocol::GUID,
                self.path,
            );
        }
    }
}

/// Installs the initramfs where the kernel's stub looks for it.
fn offer_initrd(data: Vec<u8>) -> Result<Offered, StartError> {
    let fail = |status| StartError {
        what: "offering the initramfs",
        status,
    };
    let initrd: &'static mut Initrd = Box::leak(Box::new(Initrd {
        protocol: LoadFile2Protocol {
            load_file: load_initrd,
        },
        data: data.leak(),
    }));
    // A vendor media node (type 4, subtype 3, 20 bytes: header and GUID)
    // and the end node.
    let mut path = [0u8; 24];
    path[..4].copy_from_slice(&[4, 3, 20, 0]);
    path[4..20].copy_from_slice(&LINUX_EFI_INITRD_MEDIA_GUID.to_bytes());
    path[20..].copy_from_slice(&[0x7f, 0xff, 4, 0]);
    let path: &'static [u8; 24] = Box::leak(Box::new(path));
    // SAFETY: both interfaces are leaked and so live for ever; the GUIDs
    // name exactly the structures passed (a device path is its bytes).
    let handle = unsafe {
        boot::install_protocol_interface(None, &DevicePathProtocol::GUID, path.as_ptr().cast())
    }
    .map_err(|e| fail(e.status()))?;
    let offered = Offered {
        handle,
        path: path.as_ptr().cast(),
        initrd: core::ptr::from_mut(initrd).cast(),
    };
    // SAFETY: as above.
    let installed = unsafe {
        boot::install_protocol_interface(
            Some(offered.handle),
            &LoadFile2Protocol::GUID,
            offered.initrd,
        )
    };
    if let Err(e) = installed {
        offered.withdraw();
        return Err(fail(e.status()));
    }
    Ok(offered)
}

/// Loads `kernel` (a PE image with Linux's EFI stub) and starts it with
/// `cmdline` and `initrd`. Returns only when it could not be started.
pub fn start(kernel: Vec<u8>, initrd: Option<Vec<u8>>, cmdline: &str) -> StartError {
    let loaded = boot::load_image(
        boot::image_handle(),
        LoadImageSource::FromBuffer {
            buffer: &kernel,
            file_path: None,
        },
    );
    // The firmware has its own copy now: this one's memory is the kernel's.
    drop(kernel);
    let image = match loaded {
        Ok(image) => image,
        Err(e) => {
            return StartError {
                what: "the firmware refused the kernel (LoadImage)",
                status: e.status(),
            }
        }
    };
    let options: &'static [u16] = cmdline
        .encode_utf16()
        .chain(core::iter::once(0))
        .collect::<Vec<u16>>()
        .leak();
    match boot::open_protocol_exclusive::<LoadedImage>(image) {
        Ok(mut loaded) => {
            // SAFETY: `options` is leaked and so outlives the kernel's use.
            unsafe { loaded.set_load_options(options.as_ptr().cast(), (options.len() * 2) as u32) };
        }
        Err(e) => {
            let _ = boot::unload_image(image);
            return StartError {
                what: "setting the kernel's command line",
                status: e.status(),
            };
        }
    }
    let offered = match initrd.map(offer_initrd).transpose() {
        Ok(offered) => offered,
        Err(e) => {
            let _ = boot::unload_image(image);
            return e;
        }
    };
    let status = match boot::start_image(image) {
        Ok(()) => Status::ABORTED,
        Err(e) => e.status(),
    };
    if let Some(offered) = offered {
        offered.withdraw();
    }
    // An application that returned from StartImage is unloaded by the
    // firmware already (UEFI 2.10 §7.4, Exit): its handle is not ours.
    StartError {
        what: "the kernel returned (StartImage)",
        status,
    }
}
