// Command etcd is etcd's own server entry point, built from the published
// go.etcd.io/etcd/server/v3 module (its root module, with main.go, carries replace
// directives that `go install` refuses).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
