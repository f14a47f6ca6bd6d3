// File reads straight into backend memory, and deterministic random fill.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "kernels.h"

namespace medcluster::cpu {
namespace {

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// pread may return fewer bytes than asked (signals, large requests): loop until done.
void preadAll(int fd, const std::string& path, char* dst, size_t bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, dst + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw BackendError("cannot read " + path + " at offset " + std::to_string(offset + done) + ": " +
                         std::strerror(errno));
    }
    if (n == 0) {
      throw BackendError("short read of " + path + ": wanted " + std::to_string(bytes) +
                         " bytes at offset " + std::to_string(offset) + " but the file ends after " +
                         std::to_string(done) + " of them");
    }
    done += static_cast<size_t>(n);
  }
}

// splitmix64's output function: a bijective mix, so word i depends only on (seed, i).
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

void readFileRegion(void* dst, const std::string& path, uint64_t fileOffset, int64_t cols,
                    int64_t elemSize, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw BackendError("cannot open " + path + ": " + std::strerror(errno));
  char* out = static_cast<char*>(dst);
  const size_t rowBytes = static_cast<size_t>((c1 - c0) * elemSize);
  if (c0 == 0 && c1 == cols) {
    // Whole rows are one contiguous byte range.
    preadAll(f.fd, path, out, rowBytes * static_cast<size_t>(r1 - r0),
             fileOffset + static_cast<uint64_t>(r0 * cols * elemSize));
    return;
  }
  for (int64_t r = r0; r < r1; r++) {
    preadAll(f.fd, path, out + (r - r0) * rowBytes, rowBytes,
             fileOffset + static_cast<uint64_t>((r * cols + c0) * elemSize));
  }
}

void randomBits(ThreadPool& pool, void* data, size_t bytes, uint64_t seed) {
  const int64_t words = static_cast<int64_t>((bytes + 7) / 8);
  char* out = static_cast<char*>(data);
  pool.parallelFor(words, 1 << 14, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; w++) {
      const uint64_t v = mix(seed + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(w + 1));
      const size_t at = static_cast<size_t>(w) * 8;
      std::memcpy(out + at, &v, std::min<size_t>(8, bytes - at));
    }
  });
}

void hostMemoryInfo(size_t* freeBytes, size_t* totalBytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  *totalBytes = static_cast<size_t>(::sysconf(_SC_PHYS_PAGES)) * page;
  *freeBytes = static_cast<size_t>(::sysconf(_SC_AVPHYS_PAGES)) * page;
  // Free pages alone undercount: the page cache (checkpoint reads fill it) is reclaimable.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      *freeBytes = kib * 1024;
      break;
    }
  }
}

}  // namespace medcluster::cpu
