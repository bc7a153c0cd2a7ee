// Package overlay builds the layer-2 overlay that lets a container keep its
// IP address, MAC address and TCP connections when COAT moves it to another
// edge host.
//
// How it works. Every host (an edge host, or the lab's client node) has one
// Linux bridge (coat0) and one kernel VXLAN device (vxlan0: one VNI, UDP
// 4789, source = the host's underlay IP, parent = its underlay link) enslaved
// to that bridge. All hosts share one VNI, so together the bridges form a
// single Ethernet segment stretched over the underlay.
//
//	container netns         host netns                     other hosts
//	eth0 (IP+MAC) ==veth==> cvXXXX -[coat0]- vxlan0 ==UDP 4789==> vxlan0 ...
//
// Flooding (broadcast, unknown unicast, ARP) uses head-end replication: the
// VXLAN FDB holds one all-zero entry per peer VTEP ("bridge fdb append
// 00:00:00:00:00:00 dev vxlan0 dst PEER"), and the kernel sends a copy of
// each flooded frame to every one of them. No multicast in the underlay.
//
// Unicast to a container on another host follows a static FDB entry
// MAC -> VTEP ("bridge fdb replace MAC dev vxlan0 dst VTEP") that the agent
// writes; when a container moves, the agent rewrites that entry. Learning
// stays on, so a host without an agent (the lab's client node) learns
// MAC -> VTEP from the source of decapsulated frames; after a move the
// container sends gratuitous ARP so such hosts re-learn at once. The other
// way round, agents know such a client from its record in the store and
// point its MAC at its VTEP like a container's; when the client hands over
// to another access network, its VXLAN device changes its source address
// in place (Ensure), keeping its bridge, MAC and neighbour entries.
//
// A container is a named network namespace whose eth0 is one end of a veth
// pair; the other end is a port of the host bridge. Its IP and MAC are the
// same on every host, so its TCP peers never notice the move; taking the
// host-side veth down cuts it off (frames are dropped, nobody sends RST).
// The MTU is 1450 everywhere on the overlay: VXLAN adds 50 bytes on a 1500
// underlay.
//
// Tables scale with the fleet: one flood entry per peer host and one static
// entry per remote container on every host.
//
// Every call is an idempotent "ensure": it creates what is missing, reads back
// what exists, and recreates only what is incompatible (saying why). FDB and
// neighbour writes use replace semantics. Kernel calls go through a netlink
// handle bound to the target namespace; only creating a namespace, writing
// its sysctls and opening a packet socket in it switch an OS thread, on a
// goroutine of their own.
package overlay
