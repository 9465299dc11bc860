#include "plan/sha256.hpp"

#include <doctest/doctest.h>

#include <string>

TEST_CASE("sha256 known vectors (FIPS 180-4 examples)") {
  using smp::plan::sha256_hex;
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Fed in odd pieces, the same digest.
  smp::plan::Sha256 s;
  std::string msg(1000, 'x');
  for (size_t i = 0; i < msg.size(); i += 37) s.update(msg.substr(i, 37));
  CHECK(s.hex() == sha256_hex(msg));
}
