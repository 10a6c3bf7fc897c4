//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)`, so a burst of queries costs one system call
//! to read and one to answer instead of one per datagram each way (Linux only, as is the rest
//! of the server).
//!
//! On a socket bound to a wildcard address (`0.0.0.0`, `::`), each datagram also carries the
//! address it was sent to (`IP_PKTINFO`, `IPV6_PKTINFO`), and its answer goes out from that
//! address: the kernel would otherwise pick one by its routing table, and a client that sent
//! to another address of the host drops an answer from an address it did not ask.
//!
//! The server's unsafe code is here (the calls, the `sockaddr` and control message
//! conversions, each over buffers this module owns and sizes) and in registering a socket with
//! the reactor (`udp`).

use std::{
    io,
    mem::{self, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::RawFd,
    ptr,
};

/// Datagrams per system call. Twenty clients with one query in flight each (the bench kit's
/// load) rarely queue more than this on one socket.
pub const BATCH: usize = 32;

/// Buffers for one `recvmmsg` call.
pub struct RecvBatch {
    slot_len: usize,
    buffers: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

// The raw pointers inside `iovec`/`mmsghdr` point into this struct's own vectors and are
// rewritten before every call; nothing else shares them.
#[allow(unsafe_code)]
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `BATCH` datagrams of up to `slot_len` bytes each (longer ones are cut off and
    /// then fail to parse, as they would have with `recv_from`).
    pub fn new(slot_len: usize) -> Self {
        Self {
            slot_len,
            buffers: vec![0; slot_len * BATCH],
            addrs: vec![zeroed_storage(); BATCH],
            controls: vec![Control::default(); BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                };
                BATCH
            ],
            headers: (0..BATCH).map(|_| zeroed_header()).collect(),
            received: 0,
        }
    }

    /// Receives up to `BATCH` datagrams without blocking; returns how many.
    #[allow(unsafe_code)]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (index, (((iovec, header), addr), control)) in self
            .iovecs
            .iter_mut()
            .zip(self.headers.iter_mut())
            .zip(self.addrs.iter_mut())
            .zip(self.controls.iter_mut())
            .enumerate()
        {
            let slot = &mut self.buffers[index * self.slot_len..(index + 1) * self.slot_len];
            point(
                header,
                iovec,
                slot,
                addr,
                socklen::<libc::sockaddr_storage>(),
            );
            header.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = CONTROL_LEN;
        }
        // SAFETY: every header points at its own iovec and address storage, and every iovec
        // at a distinct `slot_len` slice of `buffers`, all alive and unaliased for the call;
        // the kernel writes at most `msg_namelen` and `iov_len` bytes into them.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        self.received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
        Ok(self.received)
    }

    /// Datagram `index` of the last `recv`, with its source (`None` for an address family we
    /// do not serve).
    pub fn datagram(&self, index: usize) -> (&[u8], Option<SocketAddr>) {
        let header = &self.headers[index];
        let len = (header.msg_len as usize).min(self.slot_len);
        let start = index * self.slot_len;
        let source = socket_addr(&self.addrs[index], header.msg_hdr.msg_namelen);
        (&self.buffers[start..start + len], source)
    }

    /// The address datagram `index` was sent to, when its socket reports it (a wildcard
    /// socket, see [`report_destinations`]).
    #[allow(unsafe_code)]
    pub fn destination(&self, index: usize) -> Option<IpAddr> {
        let header = &self.headers[index].msg_hdr;
        if header.msg_controllen == 0 {
            return None;
        }
        // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into this
        // header's own `Control` buffer; the CMSG macros walk within that length, and each
        // message's data is read as the type its level and type say it holds (unaligned).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let info = ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                        return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            info.ipi_addr.s_addr,
                        ))));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                        return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                    }
                    _ => cmsg = libc::CMSG_NXTHDR(header, cmsg),
                }
            }
        }
        None
    }
}

/// Answers gathered for one `sendmmsg` call.
pub struct SendBatch {
    slot_len: usize,
    buffers: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    /// The source address each answer must go out from (a wildcard socket's, see the module).
    controls: Vec<Control>,
    control_lens: Vec<usize>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    /// For each queued answer, the index of its audit record in the receive loop's batch of
    /// records (`NO_RECORD` when it has none), so a record can say its answer did not go out.
    records: Vec<usize>,
    queued: usize,
}

const NO_RECORD: usize = usize::MAX;

// As for `RecvBatch`.
#[allow(unsafe_code)]
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(slot_len: usize) -> Self {
        Self {
            slot_len,
            buffers: vec![0; slot_len * BATCH],
            lens: vec![0; BATCH],
            addrs: vec![zeroed_storage(); BATCH],
            addr_lens: vec![0; BATCH],
            controls: vec![Control::default(); BATCH],
            control_lens: vec![0; BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                };
                BATCH
            ],
            headers: (0..BATCH).map(|_| zeroed_header()).collect(),
            records: vec![NO_RECORD; BATCH],
            queued: 0,
        }
    }

    /// Queues `bytes` for `destination`, sent from `source` when given (the address the query
    /// came to, on a wildcard socket); false when the batch is full or the answer too long.
    pub fn push(&mut self, bytes: &[u8], destination: SocketAddr, source: Option<IpAddr>) -> bool {
        let index = self.queued;
        if index == BATCH || bytes.len() > self.slot_len {
            return false;
        }
        let start = index * self.slot_len;
        self.buffers[start..start + bytes.len()].copy_from_slice(bytes);
        self.lens[index] = bytes.len();
        self.addr_lens[index] = write_sockaddr(destination, &mut self.addrs[index]);
        self.control_lens[index] =
            source.map_or(0, |source| write_source(source, &mut self.controls[index]));
        self.records[index] = NO_RECORD;
        self.queued += 1;
        true
    }

    /// Ties the answer queued last to the audit record at `record` (see `flush`).
    pub fn attach_record(&mut self, record: usize) {
        if let Some(index) = self.queued.checked_sub(1) {
            self.records[index] = record;
        }
    }

    /// Sends everything queued; returns how many answers could not be sent (a full socket
    /// buffer or an unreachable destination), which are dropped as UDP allows. `unsent` is
    /// called with the record attached to each of them.
    #[allow(unsafe_code)]
    pub fn flush(&mut self, fd: RawFd, mut unsent: impl FnMut(usize)) -> usize {
        let count = mem::take(&mut self.queued);
        for index in 0..count {
            let start = index * self.slot_len;
            point(
                &mut self.headers[index],
                &mut self.iovecs[index],
                &mut self.buffers[start..start + self.lens[index]],
                &mut self.addrs[index],
                self.addr_lens[index],
            );
            if self.control_lens[index] > 0 {
                let header = &mut self.headers[index].msg_hdr;
                header.msg_control = self.controls[index].0.as_mut_ptr().cast();
                header.msg_controllen = self.control_lens[index];
            }
        }
        let mut start = 0;
        let mut failed = 0;
        while start < count {
            // SAFETY: headers `start..count` were filled above and point at live iovecs,
            // buffers and addresses of this batch; the kernel only reads them.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[start..].as_mut_ptr(),
                    (count - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(sent) {
                Ok(sent) if sent > 0 => start += sent,
                // The first remaining answer failed (`errno` says why): skip it, go on.
                _ => {
                    if self.records[start] != NO_RECORD {
                        unsent(self.records[start]);
                    }
                    failed += 1;
                    start += 1;
                }
            }
        }
        failed
    }
}

/// Room for one control message: an `in6_pktinfo` (the larger) with its header, aligned as
/// `cmsghdr` needs.
const CONTROL_LEN: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

impl Default for Control {
    fn default() -> Self {
        Self([0; CONTROL_LEN])
    }
}

/// Asks the kernel to report the destination address of every datagram `fd` receives (for
/// a socket bound to a wildcard address: see the module).
#[allow(unsafe_code)]
pub fn report_destinations(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live `c_int` for the call, and its size is what is passed.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            ptr::from_ref(&on).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes the control message that makes a datagram leave from `source`; returns its length.
#[allow(unsafe_code)]
fn write_source(source: IpAddr, control: &mut Control) -> usize {
    *control = Control::default();
    let mut header: libc::msghdr = zeroed_header().msg_hdr;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = CONTROL_LEN;
    // SAFETY: the header points at `control`, which is `CONTROL_LEN` bytes aligned for a
    // `cmsghdr`; one message of at most `CMSG_SPACE(sizeof in6_pktinfo)` (40) bytes fits, and
    // its data is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        match source {
            IpAddr::V4(v4) => {
                let size = mem::size_of::<libc::in_pktinfo>() as libc::c_uint;
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                libc::CMSG_SPACE(size) as usize
            }
            IpAddr::V6(v6) => {
                let size = mem::size_of::<libc::in6_pktinfo>() as libc::c_uint;
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                libc::CMSG_SPACE(size) as usize
            }
        }
    }
}

/// Sends one datagram to `destination`, from `source` when given (see the module).
#[allow(unsafe_code)]
pub fn send_one(
    fd: RawFd,
    bytes: &[u8],
    destination: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<()> {
    let mut addr = zeroed_storage();
    let addr_len = write_sockaddr(destination, &mut addr);
    let mut control = Control::default();
    let control_len = source.map_or(0, |source| write_source(source, &mut control));
    let mut iovec = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut header: libc::msghdr = zeroed_header().msg_hdr;
    header.msg_name = ptr::from_mut(&mut addr).cast();
    header.msg_namelen = addr_len;
    header.msg_iov = ptr::from_mut(&mut iovec);
    header.msg_iovlen = 1;
    if control_len > 0 {
        header.msg_control = control.0.as_mut_ptr().cast();
        header.msg_controllen = control_len;
    }
    // SAFETY: the header points at live locals (address, iovec over `bytes`, control) for the
    // call; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Points `header` at one datagram: its bytes (through `iovec`) and its address.
fn point(
    header: &mut libc::mmsghdr,
    iovec: &mut libc::iovec,
    bytes: &mut [u8],
    addr: &mut libc::sockaddr_storage,
    addr_len: libc::socklen_t,
) {
    iovec.iov_base = bytes.as_mut_ptr().cast();
    iovec.iov_len = bytes.len();
    *header = zeroed_header();
    header.msg_hdr.msg_name = ptr::from_mut(addr).cast();
    header.msg_hdr.msg_namelen = addr_len;
    header.msg_hdr.msg_iov = ptr::from_mut(iovec);
    header.msg_hdr.msg_iovlen = 1;
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: `sockaddr_storage` is plain old data; all zeros is a valid (AF_UNSPEC) value.
    #[allow(unsafe_code)]
    unsafe {
        MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init()
    }
}

fn zeroed_header() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is plain old data (integers and null pointers when zeroed).
    #[allow(unsafe_code)]
    unsafe {
        MaybeUninit::<libc::mmsghdr>::zeroed().assume_init()
    }
}

fn socklen<T>() -> libc::socklen_t {
    // Socket address structures are at most 128 bytes.
    mem::size_of::<T>() as libc::socklen_t
}

/// The source address the kernel wrote into `storage`.
#[allow(unsafe_code)]
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= socklen::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which is smaller than
            // and alignment-compatible with `sockaddr_storage`.
            let addr = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u16::from_be(addr.sin_port),
            )))
        }
        libc::AF_INET6 if len >= socklen::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let addr = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(addr.sin6_addr.s6_addr),
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `storage` as the kernel expects it; returns its length.
#[allow(unsafe_code)]
fn write_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    *storage = zeroed_storage();
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: `sockaddr_in` fits in and is alignment-compatible with the storage.
            let out = unsafe { &mut *ptr::from_mut(storage).cast::<libc::sockaddr_in>() };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = v4.port().to_be();
            out.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            socklen::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let out = unsafe { &mut *ptr::from_mut(storage).cast::<libc::sockaddr_in6>() };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = v6.port().to_be();
            out.sin6_addr.s6_addr = v6.ip().octets();
            out.sin6_flowinfo = v6.flowinfo();
            out.sin6_scope_id = v6.scope_id();
            socklen::<libc::sockaddr_in6>()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd};

    use super::*;

    #[test]
    fn addresses_round_trip_through_sockaddr() {
        for addr in ["192.0.2.7:53", "[2001:db8::9]:5353"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut storage = zeroed_storage();
            let len = write_sockaddr(addr, &mut storage);
            assert_eq!(socket_addr(&storage, len), Some(addr));
        }
        assert_eq!(socket_addr(&zeroed_storage(), 0), None);
    }

    #[test]
    fn a_burst_is_received_and_answered_in_batches() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for index in 0..40u8 {
            client
                .send_to(&[index; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut recv = RecvBatch::new(512);
        let mut send = SendBatch::new(512);
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let count = match recv.recv(server.as_raw_fd()) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => panic!("{error}"),
            };
            assert!(count <= BATCH);
            for index in 0..count {
                let (bytes, source) = recv.datagram(index);
                assert_eq!(source, Some(client.local_addr().unwrap()));
                seen.push(bytes[0]);
                assert_eq!(recv.destination(index), None, "not asked for");
                assert!(send.push(&[bytes[0], 0xff], source.unwrap(), None));
            }
            assert_eq!(send.flush(server.as_raw_fd(), |_| ()), 0);
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
        for index in 0..40u8 {
            let mut buffer = [0u8; 16];
            let (len, _) = client.recv_from(&mut buffer).unwrap();
            assert_eq!(&buffer[..len], &[index, 0xff]);
        }
    }
}
