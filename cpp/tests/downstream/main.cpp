// Loads an artifact folder through the installed carseg package and segments one photo.
#include <carseg/error.h>
#include <carseg/image_io.h>
#include <carseg/predictor.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: carseg_downstream ARTIFACTS IMAGE\n";
    return 2;
  }
  try {
    carseg::PredictorOptions options;
    options.warmup_iters = 1;
    const carseg::Predictor predictor(argv[1], options);
    carseg::Image img = carseg::read_image(argv[2]);
    const torch::Tensor mask =
        predictor.predict(torch::from_blob(img.pixels.data(), {img.height, img.width, 3}, torch::kUInt8));
    if (mask.size(0) != img.height || mask.size(1) != img.width) {
      std::cerr << "carseg_downstream: expected a " << img.height << "x" << img.width
                << " mask, got " << mask.sizes() << "\n";
      return 1;
    }
    std::cout << "carseg_downstream: ok " << mask.sizes() << " foreground "
              << mask.to(torch::kFloat32).mean().item<float>() << "\n";
    return 0;
  } catch (const carseg::Error& e) {
    std::cerr << "carseg_downstream: error: " << e.what() << "\n";
    return 1;
  }
}
