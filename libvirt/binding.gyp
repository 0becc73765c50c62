{
  "targets": [
    {
      "target_name": "groupsnap_libvirt",
      "sources": [
        "src/native/addon.cc",
        "src/native/async.cc",
        "src/native/connection.cc",
        "src/native/domain.cc",
        "src/native/pool.cc"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-Wall", "<!@(pkg-config --cflags libvirt)"],
      "libraries": ["<!@(pkg-config --libs libvirt)"],
      "ldflags": ["-Wl,-z,nodelete"]
    }
  ]
}
