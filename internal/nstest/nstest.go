// Package nstest gives root-only tests throwaway network namespaces, veth
// pairs between them, and TCP endpoints inside them. Every namespace is
// uniquely named and removed in t.Cleanup, also when the test fails, so tests
// using it may run in parallel.
//
// It deliberately does not use the code under test (internal/overlay) to
// build namespaces, so that code can be checked against it.
package nstest
